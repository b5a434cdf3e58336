"""iRPE in query chunks: `IRPE.bias_rows` equals rows of the full bias (values and gradients), is built from the
small offset table (no [n, n] tensor), and a chunked attention / vit_irpe model equals the unchunked one."""
import pytest
import torch

import zoo
from zoo.nn import Attention
from zoo.pe.irpe import IRPE, _bucket_block, irpe_bucket_ids
from zoo.positions import Positions
from support.irpe import random_irpe

METHODS = ["product", "euclidean", "quant", "cross"]




def _leaves(b, nh, n, d, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, nh, n, d, generator=g).requires_grad_() for _ in range(3)]


@pytest.mark.parametrize("method", ["product", "euclidean", "quant", "cross_rows", "cross_cols"])
@pytest.mark.parametrize("h, w, skip", [(5, 7, 1), (4, 4, 0), (3, 6, 2)])
def test_bucket_block_is_a_block_of_the_full_ids(method, h, w, skip):
    ids, _ = irpe_bucket_ids(method, h, w, skip, 2.5)
    n = skip + h * w
    for s, e in [(0, 3), (1, 9), (n - 4, n)]:
        rows = torch.arange(s, e)
        assert torch.equal(_bucket_block(method, h, w, skip, 2.5, rows, torch.arange(n)), ids[s:e])
        assert torch.equal(_bucket_block(method, h, w, skip, 2.5, torch.arange(n), rows), ids[:, s:e])


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("mode, rpe_on, shared", [("contextual", "k", True), ("contextual", "q", False),
                                                  ("contextual", "qk", True), ("bias", "qk", False),
                                                  ("bias", "k", True)])
def test_bias_rows_equal_rows_of_the_full_bias_values_and_gradients(method, mode, rpe_on, shared):
    h, w, skip, nh, d = 5, 7, 1, 3, 8
    n = skip + h * w
    pe = random_irpe(d, nh, method=method, mode=mode, shared=shared, rpe_on=rpe_on)
    assert pe.has_bias_rows and pe.bias_floats_per_pair > 0
    pos = Positions.grid_2d(h, w, num_prefix=skip)
    q, k, _ = _leaves(2, nh, n, d)
    full = pe.bias(q, k, pos, 0.3)                                               # [b|1, h|1, n, n]
    g = torch.Generator().manual_seed(5)
    for start, c in [(0, 7), (7, 11), (30, 6), (n - 1, 1), (0, n)]:
        rows = pe.bias_rows(q[..., start:start + c, :], k, pos, 0.3, start)
        assert rows.shape[-2:] == (c, n)
        torch.testing.assert_close(rows, full[..., start:start + c, :], atol=1e-6, rtol=1e-6)
        w_out = torch.randn(rows.shape, generator=g)
        params = [q, k] + list(pe.parameters())
        got = torch.autograd.grad((rows * w_out).sum(), params, allow_unused=True)
        want = torch.autograd.grad((full[..., start:start + c, :] * w_out).sum(), params, retain_graph=True,
                                   allow_unused=True)
        for a, b in zip(got, want):
            if b is None:
                assert a is None or not a.any()
            else:
                torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_bias_rows_without_positions_and_on_a_prefix_free_grid():
    pe = random_irpe(8, 2, rpe_on="qk", skip=1)
    for n, pos in [(26, None), (35, Positions.grid_2d(5, 7, num_prefix=0))]:     # 26 = 5x5 + 1 by the sqrt rule
        q, k, _ = _leaves(1, 2, n, 8)
        full = pe.bias(q, k, pos, 1.0)
        torch.testing.assert_close(pe.bias_rows(q[..., 4:13, :], k, pos, 1.0, 4), full[..., 4:13, :])


def test_bias_rows_rejects_blocks_outside_the_keys_and_bad_grids():
    pe = random_irpe(8, 2)
    q, k, _ = _leaves(1, 2, 36, 8)
    with pytest.raises(ValueError, match="does not fit"):
        pe.bias_rows(q[..., :5, :], k, None, 1.0, 33)
    with pytest.raises(ValueError, match="does not fit"):
        pe.bias_rows(q[..., :5, :], k, None, 1.0, -1)
    with pytest.raises(ValueError, match="grid 5x5"):
        pe.bias_rows(q[..., :5, :], k, Positions.grid_2d(5, 5, num_prefix=1), 1.0, 0)


def test_bias_rows_hold_no_n_by_n_tensor(largest_tensor):
    h, w, nh, d, c = 12, 12, 2, 16, 8
    n = 1 + h * w
    pe = random_irpe(d, nh, rpe_on="qk")
    pos = Positions.grid_2d(h, w, num_prefix=1)
    q, k, _ = [t.detach() for t in _leaves(1, nh, n, d)]
    pe.bias_rows(q[..., :c, :], k, pos, 0.125, 0)                               # warm the offset-table cache
    with largest_tensor() as spy:
        rows = pe.bias_rows(q[..., 40:40 + c, :], k, pos, 0.125, 40)
    assert rows.shape == (1, nh, c, n)
    assert spy.numel <= max(nh * c * n, nh * n * 50) < nh * n * n                # rows, or rpe_q's k @ W_q


@pytest.mark.parametrize("method, rpe_on", [("product", "k"), ("cross", "qk"), ("euclidean", "q")])
def test_chunked_attention_equals_unchunked_and_never_builds_the_full_bias(method, rpe_on, monkeypatch):
    h, w, nh, d = 6, 6, 2, 8
    n = 1 + h * w
    pe = random_irpe(d, nh, method=method, rpe_on=rpe_on)
    attn = Attention(nh * d, nh, pe=pe)
    pos = Positions.grid_2d(h, w, num_prefix=1)
    outs, grads = [], []
    for chunk in (0, 5):
        attn.chunk_size = chunk
        q, k, v = _leaves(2, nh, n, d)
        if chunk:
            monkeypatch.setattr(pe, "bias", lambda *a: pytest.fail("the full bias was built"))
        out = attn._attend_rotated(q, k, v, pos)
        out.square().sum().backward()
        outs.append(out)
        grads.append([q.grad, k.grad, v.grad] + [p.grad.clone() for p in pe.parameters()])
        pe.zero_grad()
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-5)
    for a, b in zip(grads[1], grads[0]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_vit_irpe_small_chunked_equals_unchunked_logits_and_gradients(monkeypatch):
    torch.manual_seed(0)
    model = zoo.create("vit_irpe_small", img_size=64, patch_size=8, depth=2, num_classes=10).eval()   # 8x8 + cls
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lookup_table" in name:
                p.normal_(0.0, 0.5)
    x = torch.randn(2, 3, 64, 64)
    runs = []
    for chunk in (0, 7):
        for blk in model.blocks:
            blk.attn.chunk_size = chunk
            if chunk:                                                            # rows only, never the full bias
                monkeypatch.setattr(blk.attn.pe, "bias", lambda *a: pytest.fail("the full bias was built"))
        model.zero_grad()
        out = model(x)
        out.square().sum().backward()
        runs.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (out0, g0), (out1, g1) = runs
    torch.testing.assert_close(out1, out0, atol=1e-5, rtol=1e-5)
    assert g0.keys() == g1.keys() and any("lookup_table" in n for n in g0)
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], atol=1e-4, rtol=1e-4, msg=name)


@pytest.mark.parametrize("skip", [0, 1, 2])
@pytest.mark.parametrize("shared", [True, False])
def test_inference_rows_by_axes_equal_the_full_bias(monkeypatch, skip, shared):
    """Without a gradient, contextual product rows are gathered axis by axis (no block of bucket ids): the same
    rows as the full bias, for blocks anywhere (prefix rows included)."""
    import zoo.pe.irpe as irpe_mod
    torch.manual_seed(skip)
    enc = IRPE(8, 4, rpe_on="k", skip=1 if skip else 0, shared_head=shared)
    with torch.no_grad():
        enc.rpe_k.lookup_table_weight.normal_()
    h, w = 5, 7
    n = skip + h * w
    pos = Positions.grid_2d(h, w, num_prefix=skip)
    q, k = torch.randn(2, 4, n, 8), torch.randn(2, 4, n, 8)
    full = enc.bias(q, k, pos, 0.3)
    monkeypatch.setattr(irpe_mod, "_bucket_block", lambda *a, **kw: pytest.fail("bucket ids built"))
    for start, c in ((0, n), (0, 3), (1, 5), (n - 4, 4)):
        with torch.no_grad():
            rows = enc.bias_rows(q[:, :, start:start + c], k, pos, 0.3, start)
        torch.testing.assert_close(rows, full[:, :, start:start + c], atol=1e-6, rtol=1e-6)
