"""xPos (Sun et al., 2022): pinned against the torchscale XPOS formula, relative property, KV cache, layouts."""
import pytest
import torch

from zoo import Positions
from zoo.pe.rope import interleaved_to_half
from zoo.pe.xpos import XPos, xpos_zeta


def torchscale_xpos(x, offset=0, downscale=False, scale_base=512.0):
    """The algorithm of torchscale XPOS.forward (microsoft/torchscale @4d1e0e8), re-derived in float64.

    x [B, L, D]; positions of x are offset .. offset+L-1, the exponent is centred with min_pos = -(L+offset)//2.
    """
    x = x.double()
    L, D = x.shape[1], x.shape[2]
    zeta = (torch.arange(0, D, 2, dtype=torch.float64) + 0.4 * D) / (1.4 * D)              # [D/2]
    min_pos = -(L + offset) // 2
    max_pos = L + offset + min_pos
    scale = zeta ** (torch.arange(min_pos, max_pos, dtype=torch.float64) / scale_base)[:, None]   # [L+off, D/2]
    half = D // 2
    inv = 1.0 / (10000 ** (torch.arange(half, dtype=torch.float64) / half))                  # fixed_pos_embedding
    ang = torch.arange(L + offset, dtype=torch.float64)[:, None] * inv
    sin, cos = ang.sin(), ang.cos()
    scale, sin, cos = scale[-L:], sin[-L:], cos[-L:]
    if downscale:
        scale = 1 / scale
    sin = (sin * scale).repeat_interleave(2, dim=-1)                                         # duplicate_interleave
    cos = (cos * scale).repeat_interleave(2, dim=-1)
    rot = torch.stack([-x[..., 1::2], x[..., 0::2]], dim=-1).flatten(-2)                     # rotate_every_two
    return x * cos + rot * sin


def test_zeta_pinned():
    torch.testing.assert_close(xpos_zeta(8), torch.tensor([3.2 / 11.2, 5.2 / 11.2, 7.2 / 11.2, 9.2 / 11.2]))


@pytest.mark.parametrize("n", [1, 6, 7])
def test_matches_torchscale_without_cache(n):
    torch.manual_seed(0)
    q, k = torch.randn(2, 3, n, 16), torch.randn(2, 3, n, 16)                   # [b, h, n, d]
    rq, rk = XPos(16).rotate(q, k, None)
    ref_q = torchscale_xpos(q.reshape(6, n, 16)).reshape(2, 3, n, 16)
    ref_k = torchscale_xpos(k.reshape(6, n, 16), downscale=True).reshape(2, 3, n, 16)
    torch.testing.assert_close(rq.double(), ref_q, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rk.double(), ref_k, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("nq,nk", [(1, 9), (1, 10), (3, 10)])
def test_kv_cache_matches_torchscale_incremental(nq, nk):
    """torchscale decoding: k = xpos(k_all, 0, downscale), q = xpos(q_new, offset=nk-nq)."""
    torch.manual_seed(1)
    q, k = torch.randn(1, 2, nq, 8), torch.randn(1, 2, nk, 8)
    xp = XPos(8, scale_base=64.0)
    rq, rk = xp.rotate(q, k, None)
    ref_q = torchscale_xpos(q[0], offset=nk - nq, scale_base=64.0)[None]
    ref_k = torchscale_xpos(k[0], downscale=True, scale_base=64.0)[None]
    torch.testing.assert_close(rq.double(), ref_q, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rk.double(), ref_k, atol=1e-5, rtol=1e-5)
    # the cached step gives the same scores as the last rows of the full computation
    full_q = torch.cat([torch.randn(1, 2, nk - nq, 8), q], dim=-2)
    fq, fk = xp.rotate(full_q, k, None)
    torch.testing.assert_close(rq @ rk.transpose(-2, -1), (fq @ fk.transpose(-2, -1))[..., -nq:, :],
                               atol=1e-5, rtol=1e-5)
    # and explicit ids 0..nk-1 are the same as no ids
    iq, ik = xp.rotate(q, k, Positions.sequence(nk))
    torch.testing.assert_close(iq, rq, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ik, rk, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("layout", ["interleaved", "half"])
@pytest.mark.parametrize("shift", [37, 2.5, 1000])
def test_scores_depend_only_on_relative_position(layout, shift):
    torch.manual_seed(2)
    xp = XPos(16, scale_base=32.0, layout=layout)
    q, k = torch.randn(2, 2, 6, 16), torch.randn(2, 2, 6, 16)
    ids = torch.tensor([[0.0, 1, 2, 5, 9, 20], [3.0, 4, 5, 6, 7, 8]])
    a = xp.rotate(q, k, Positions(ids=ids))
    b = xp.rotate(q, k, Positions(ids=ids + shift))
    s1, s2 = a[0] @ a[1].transpose(-2, -1), b[0] @ b[1].transpose(-2, -1)
    torch.testing.assert_close(s1, s2, atol=1e-4, rtol=1e-4)
    # closed form of one score: sum over pairs of zeta^((i-j)/gamma) * (rotated pair dot product)
    i, j, zeta = 5, 2, xpos_zeta(16).double()
    rel = float(ids[0, i] - ids[0, j])
    theta = 10000.0 ** (-torch.arange(0, 16, 2, dtype=torch.float64) / 16)
    qq, kk = q[0, 0, i].double(), k[0, 0, j].double()
    if layout == "interleaved":
        q1, q2, k1, k2 = qq[0::2], qq[1::2], kk[0::2], kk[1::2]
    else:
        q1, q2, k1, k2 = qq[:8], qq[8:], kk[:8], kk[8:]
    c, s = torch.cos(rel * theta), torch.sin(rel * theta)
    pair = (q1 * k1 + q2 * k2) * c + (q1 * k2 - q2 * k1) * s               # q . R((j-i) theta) k
    expect = (zeta ** (rel / 32.0) * pair).sum()
    assert s1[0, 0, i, j].item() == pytest.approx(expect.item(), rel=1e-4, abs=1e-4)


def test_half_layout_equals_interleaved_after_permutation():
    torch.manual_seed(3)
    q, k = torch.randn(1, 1, 5, 8), torch.randn(1, 1, 5, 8)
    a = XPos(8, layout="interleaved").rotate(q, k, None)
    perm = interleaved_to_half(torch.arange(8).float()[:, None], 8).flatten().long()   # half channel c <- perm[c]
    b = XPos(8, layout="half").rotate(q[..., perm], k[..., perm], None)
    torch.testing.assert_close(b[0] @ b[1].transpose(-2, -1), a[0] @ a[1].transpose(-2, -1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b[0], a[0][..., perm], atol=1e-6, rtol=1e-6)


def test_decay_and_float32_under_autocast():
    xp = XPos(64)
    q = torch.ones(1, 1, 300, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rq, rk = xp.rotate(q.bfloat16(), q.bfloat16(), None)
    assert rq.dtype == torch.bfloat16
    assert not torch.equal(rq[0, 0, 256], rq[0, 0, 257])
    # query scaled up and key down by the same zeta^(n/512) around the centre: the norms mirror each other
    rq, rk = xp.rotate(q, q, None)
    n_q, n_k = rq.norm(dim=-1)[0, 0], rk.norm(dim=-1)[0, 0]
    assert n_q[-1] < n_q[0] and n_k[-1] > n_k[0]                            # zeta < 1: later q smaller, k larger
    torch.testing.assert_close(n_q[150], torch.tensor(8.0), atol=1e-5, rtol=0)  # the centre ceil(300/2): scale 1


def test_xpos_bad_input():
    with pytest.raises(ValueError, match="head_dim"):
        XPos(7)
    with pytest.raises(ValueError, match="scale_base"):
        XPos(8, scale_base=0)
    with pytest.raises(ValueError, match="layout"):
        XPos(8, layout="every_two")
    with pytest.raises(ValueError, match="head_dim"):
        XPos(8).rotate(torch.randn(1, 1, 2, 6), torch.randn(1, 1, 2, 6), None)
    with pytest.raises(ValueError, match="pos.ids"):
        XPos(8).rotate(torch.randn(1, 1, 2, 8), torch.randn(1, 1, 2, 8), Positions.sequence(3))
    with pytest.raises(ValueError, match="last nq"):
        XPos(8).rotate(torch.randn(1, 1, 3, 8), torch.randn(1, 1, 2, 8), None)
