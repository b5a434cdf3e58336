"""Reading-order codes (ROPE, paper-only spec), word graphs and the graph layer / bias."""
import itertools

import pytest
import torch

from zoo.pe.reading_order import (ReadingOrderBias, ReadingOrderGraphConv, adjacency_to_neighbors,
                                  beta_skeleton_graph, box_centers, knn_graph, reading_order_codes,
                                  reading_order_embedding)
from zoo.positions import Positions


def _pts(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, n, 2, generator=g) * 1000


def test_knn_matches_brute_force_and_excludes_self_and_padding():
    c = _pts(10)
    mask = torch.ones(1, 10, dtype=torch.bool)
    mask[0, 7] = False
    idx, valid = knn_graph(c, 3, mask)
    for i in range(10):
        if i == 7:
            assert not valid[0, i].any()
            continue
        d = sorted((float((c[0, i] - c[0, j]).norm()), j) for j in range(10) if j not in (i, 7))
        assert idx[0, i].tolist() == [j for _, j in d[:3]]
        assert valid[0, i].all()
    idx, valid = knn_graph(c[:, :3], 5)                                          # fewer tokens than k
    assert valid.sum(-1).tolist() == [[2, 2, 2]]


def test_codes_hand_example():
    # target 0 (order 5) with neighbours 1 (order 9), 2 (order 1), 3 (order 3) -> sorted: 2, 3, [0], 1
    order = torch.tensor([5, 9, 1, 3])
    idx = torch.tensor([[[1, 2, 3]]]).expand(1, 4, 3).clone()
    valid = torch.zeros(1, 4, 3, dtype=torch.bool)
    valid[0, 0] = True
    codes = reading_order_codes(order, idx, valid)
    assert codes[0, 0].tolist() == [1, -2, -1]
    assert codes[0, 1:].abs().sum() == 0


def test_codes_are_signed_rank_permutations():
    c = _pts(15, 1)
    idx, valid = knn_graph(c, 5)
    order = torch.randperm(15, generator=torch.Generator().manual_seed(0))
    codes = reading_order_codes(order, idx, valid)
    for i in range(15):
        before = int((order[idx[0, i]] < order[i]).sum())
        assert sorted(codes[0, i].tolist()) == list(range(-before, 0)) + list(range(1, 5 - before + 1))
        # code sign says before/after, and the order among neighbours is preserved
        for a, b in itertools.combinations(range(5), 2):
            assert (codes[0, i, a] < codes[0, i, b]) == (order[idx[0, i, a]] < order[idx[0, i, b]])


def test_codes_invariant_to_global_shift_and_far_reordering():
    c = _pts(20, 2)
    idx, valid = knn_graph(c, 4)
    order = torch.arange(20)
    base = reading_order_codes(order, idx, valid)
    assert torch.equal(base, reading_order_codes(order + 1000, idx, valid))
    assert torch.equal(base, reading_order_codes(order.double() * 2.5 - 3, idx, valid))   # monotone map
    # reorder words outside target 0's neighbourhood: its codes are unchanged
    near = set(idx[0, 0].tolist()) | {0}
    far = [j for j in range(20) if j not in near]
    perm = order.clone()
    perm[far] = order[far].flip(0)
    assert torch.equal(reading_order_codes(perm, idx, valid)[0, 0], base[0, 0])


def _gabriel_brute(p):
    n = p.shape[0]
    adj = torch.zeros(n, n, dtype=torch.bool)
    for i, j in itertools.combinations(range(n), 2):
        mid, r2 = (p[i] + p[j]) / 2, float(((p[i] - p[j]) / 2).pow(2).sum())
        if all(float((p[m] - mid).pow(2).sum()) >= r2 for m in range(n) if m not in (i, j)):
            adj[i, j] = adj[j, i] = True
    return adj


def test_beta_skeleton_gabriel_matches_brute_force():
    c = _pts(14, 3)
    adj = beta_skeleton_graph(c, beta=1.0)
    assert torch.equal(adj[0], _gabriel_brute(c[0].double()))
    assert torch.equal(adj, adj.transpose(1, 2))
    nn1, _ = knn_graph(c, 1)                                                      # nearest neighbour edges are kept
    assert all(adj[0, i, nn1[0, i, 0]] for i in range(14))
    sparser = beta_skeleton_graph(c, beta=2.0)
    assert (sparser & ~adj).sum() == 0 and sparser.sum() <= adj.sum()            # larger beta: subgraph
    idx, valid = adjacency_to_neighbors(adj)
    assert valid.sum() == adj.sum()
    with pytest.raises(ValueError, match="beta"):
        beta_skeleton_graph(c, beta=0.5)


def test_embedding_and_graph_layer():
    e = reading_order_embedding(torch.tensor([-2, 0, 3]), 8)
    assert torch.allclose(e[1], torch.tensor([0.0] * 4 + [1.0] * 4))
    assert torch.allclose(e[2, 0], torch.sin(torch.tensor(3.0)))
    boxes = torch.cat([_pts(9, 4), _pts(9, 4) + 20], -1).clamp(max=1000)
    idx, valid = knn_graph(box_centers(boxes), 3)
    codes = reading_order_codes(torch.arange(9), idx, valid)
    layer = ReadingOrderGraphConv(16, 8)
    h = torch.randn(1, 9, 16)
    out = layer(h, idx, valid, codes)
    assert out.shape == (1, 9, 16)
    assert torch.allclose(out, layer(h, idx, valid, reading_order_codes(torch.arange(9) + 50, idx, valid)))
    assert not torch.allclose(out, layer(h, idx, valid, reading_order_codes(torch.arange(9).flip(0), idx, valid)))


def test_reading_order_bias_hook():
    boxes = torch.cat([_pts(10, 5), _pts(10, 5) + 10], -1).clamp(max=1000).long()
    pe = ReadingOrderBias(num_heads=2, k=3)
    q = torch.randn(1, 2, 10, 4)
    bias = pe.bias(q, q, Positions(boxes=boxes), 0.5)
    idx, valid = knn_graph(box_centers(boxes), 3)
    on = torch.zeros(10, 10, dtype=torch.bool)
    on[torch.arange(10)[:, None].expand(10, 3), idx[0]] = True
    assert (bias[0, :, ~on & ~torch.eye(10, dtype=torch.bool)] < -1e30).all()
    assert torch.equal(bias, pe.bias(q, q, Positions(boxes=boxes, ids=torch.arange(10) + 9), 0.5))
    with pytest.raises(ValueError, match="Positions.boxes"):
        pe.bias(q, q, Positions(), 0.5)
