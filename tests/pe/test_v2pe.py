"""V2PE positions against the official semantics (written out independently here) and float RoPE."""

import pytest
import torch

from zoo.pe.rope import RoPE
from zoo.pe.v2pe import V2PE, V2PE_STRIDES, v2pe_position_ids
from zoo.positions import Positions

IMG, END, TXT = 7, 8, 3


def official(input_ids, mask, num_tiles, strides, num_image_token=256):
    """OpenGVLab/V2PE get_rope_pos_id (v2pe_fix, one row): text segments by cumsum of the mask, visual tokens by
    torch.linspace in float32, ceil after each image, padding text positions 1."""
    starts = torch.where(input_ids == IMG)[0].tolist()
    out, last, start = [], -1, 0
    for i, s in enumerate(starts):
        seg = mask[start:s + 1].long()
        pre = seg.cumsum(-1) - 1 + (last + 1)
        pre = pre.masked_fill(seg == 0, 1)
        out.append(pre.float())
        last = int(pre[-1])
        L = num_image_token * num_tiles[i]
        small = strides[i] / num_image_token
        vis = torch.linspace(last, last + small * L, L + 1)[1:].float()
        out.append(vis)
        last = int(torch.ceil(vis[-1]))
        start = s + L + 1
        assert input_ids[start] == END
    seg = mask[start:].long()
    pre = (seg.cumsum(-1) - 1 + (last + 1)).masked_fill(seg == 0, 1)
    out.append(pre.float())
    return torch.cat(out)


def build(row_spec, n_image_token, pad_left=0, pad_right=0):
    """row_spec: list of ints (text run lengths) and ('img', tiles). Returns ids, mask, visual."""
    ids = [TXT] * pad_left
    for item in row_spec:
        if isinstance(item, int):
            ids += [TXT] * item
        else:
            ids += [IMG] + [0] * (n_image_token * item[1]) + [END]
    ids += [TXT] * pad_right
    ids = torch.tensor(ids)
    mask = torch.ones_like(ids)
    mask[:pad_left] = 0
    if pad_right:
        mask[-pad_right:] = 0
    visual = ids == 0
    return ids, mask, visual


@pytest.mark.parametrize("stride", [1, 16, 64, 256])
def test_multi_image_multi_tile_with_padding_matches_official(stride):
    spec = [5, ("img", 3), 4, ("img", 1), 2]
    rows = [build(spec, 256, pad_right=3), build(spec, 256, pad_left=3)]
    ids = torch.stack([r[0] for r in rows])
    mask = torch.stack([r[1] for r in rows])
    vis = torch.stack([r[2] for r in rows])
    got = v2pe_position_ids(vis, mask, stride=stride)
    for r in range(2):
        want = official(ids[r], mask[r], [3, 1], [stride, stride])
        assert torch.equal(got[r], want), (stride, r)


def test_references_example_stride_16():
    ids, mask, vis = build([3, ("img", 3), 2], 256)          # <img> at index 3
    pos = v2pe_position_ids(vis, mask, stride=16)
    assert pos[3] == 3 and pos[4] == 3.0625 and pos[4 + 767] == 51.0 and pos[4 + 768] == 52


def test_stride_256_is_ordinary_positions():
    ids, mask, vis = build([4, ("img", 2), 3], 256, pad_right=2)
    pos = v2pe_position_ids(vis, mask, stride=256)
    plain = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1).float()
    assert torch.equal(pos, plain)


def test_random_strides_per_image_reproducible():
    spec = [2, ("img", 1), 2, ("img", 2), 1, ("img", 1), 1]
    ids, mask, vis = build(spec, 16)
    vis2 = torch.stack([vis, vis])
    a, sa = v2pe_position_ids(vis2, None, "random", 16, generator=torch.Generator().manual_seed(3),
                              return_strides=True)
    b, sb = v2pe_position_ids(vis2, None, "random", 16, generator=torch.Generator().manual_seed(3),
                              return_strides=True)
    assert torch.equal(a, b) and sa == sb
    assert all(s in V2PE_STRIDES for row in sa for s in row) and all(len(row) == 3 for row in sa)
    for r in range(2):
        assert torch.equal(a[r], official(ids, torch.ones_like(ids), [1, 2, 1], sa[r], 16))
    draws = {tuple(v2pe_position_ids(vis, None, "random", 16, generator=torch.Generator().manual_seed(s),
                                     return_strides=True)[1][0]) for s in range(20)}
    assert len(draws) > 5                                                        # strides vary per image and call


def test_per_image_strides_and_int_image_index():
    vis = torch.tensor([-1, 0, 0, 1, 1, -1])                 # two adjacent images told apart by index
    pos = v2pe_position_ids(vis, stride=[2, 4], num_image_token=2)
    assert pos.tolist() == [0, 1, 2, 4, 6, 7]
    with pytest.raises(ValueError, match="per-image"):
        v2pe_position_ids(vis, stride=[2], num_image_token=2)
    with pytest.raises(ValueError, match="visual"):
        v2pe_position_ids(torch.zeros(3))
    with pytest.raises(ValueError, match="stride"):
        v2pe_position_ids(vis, stride=-1)


def test_v2pe_rope_float_positions_float32_angles():
    pe = V2PE(16)
    pos = torch.tensor([[3.0, 3.0625, 51.0, 1000.0625, 1000.125]])
    q = torch.randn(1, 2, 5, 16)
    qr, kr = pe.rotate(q, q, Positions(ids=pos))
    inv = 1.0 / (10000.0 ** (torch.arange(0, 16, 2, dtype=torch.float64) / 16))
    ang = pos.double()[0, :, None] * inv
    cos, sin = torch.cat([ang.cos(), ang.cos()], -1), torch.cat([ang.sin(), ang.sin()], -1)
    half = torch.cat([-q.double()[..., 8:], q.double()[..., :8]], -1)
    want = q.double() * cos + half * sin                                          # official rotate_half formula
    assert torch.allclose(qr.double(), want, atol=1e-5)
    # bf16 inputs: angles stay float32, so 1000.0625 and 1000.125 rotate differently
    qb = torch.ones(1, 1, 5, 16, dtype=torch.bfloat16)
    rb, _ = pe.rotate(qb, qb, Positions(ids=pos))
    assert not torch.equal(rb[0, 0, 3], rb[0, 0, 4])
    # relative: shifting all float positions leaves q.k unchanged
    qs, ks = pe.rotate(q, q, Positions(ids=pos + 7.5))
    assert torch.allclose(qr @ kr.transpose(-1, -2), qs @ ks.transpose(-1, -2), atol=1e-4)
    assert isinstance(pe, RoPE)
    with pytest.raises(ValueError, match="Positions.ids"):
        pe.rotate(q, q, None)
