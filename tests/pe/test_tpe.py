"""MD-TPE (LightNet): chunked scans against naive O(n²) Toeplitz matrices, Tpe/MdTpe against the formula on a grid
with a prefix token, causal form, padding, gradients, no [n, n] intermediate."""
import pytest
import torch
import torch.nn.functional as F

from zoo import Positions
from zoo.pe.tpe import MdTpe, Tpe, decayed_scan, toeplitz_mix


def toeplitz(lam, L, kind):
    """[H, L, L] matrices T[h, t, s] = λ_h^{|t-s|} (kind 'sym'), λ^{t-s} for s <= t ('causal'), λ^{s-t} for s >= t
    ('anti'), built entry by entry."""
    T = torch.zeros(len(lam), L, L, dtype=torch.float64)
    for h, l in enumerate(lam):
        for t in range(L):
            for s in range(L):
                if kind == "sym" or (kind == "causal" and s <= t) or (kind == "anti" and s >= t):
                    T[h, t, s] = float(l) ** abs(t - s)
    return T


def apply_toeplitz(T, x):
    # x [B, L, H, Dh], T [H, L, L]
    return torch.einsum("hts,bshd->bthd", T, x.double())


LAM = [0.3, 0.8, 0.97]


@pytest.mark.parametrize("chunk", [1, 3, 4, 32])
@pytest.mark.parametrize("reverse", [False, True])
def test_decayed_scan_matches_toeplitz_matrix(chunk, reverse):
    torch.manual_seed(0)
    x = torch.randn(2, 10, 3, 4)
    lam = torch.tensor(LAM)
    y = decayed_scan(x, lam.log(), chunk=chunk, reverse=reverse)
    ref = apply_toeplitz(toeplitz(LAM, 10, "anti" if reverse else "causal"), x)
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk", [3, 32])
def test_bidirectional_mix_is_the_symmetric_kernel(chunk):
    torch.manual_seed(0)
    x = torch.randn(2, 11, 3, 4)
    y = toeplitz_mix(x, torch.tensor(LAM).log(), bidirectional=True, chunk=chunk)
    torch.testing.assert_close(y.double(), apply_toeplitz(toeplitz(LAM, 11, "sym"), x), rtol=1e-5, atol=1e-5)
    y1 = toeplitz_mix(x, torch.tensor(LAM).log(), bidirectional=False, chunk=chunk)
    torch.testing.assert_close(y1.double(), apply_toeplitz(toeplitz(LAM, 11, "causal"), x), rtol=1e-5, atol=1e-5)


def naive_tpe(tpe: Tpe, x, T):
    """o = o_proj(GroupRMSNorm((q_h·k_h) T_h x)), float64; x [B, L, C], T [H, L, L]."""
    b, L, c = x.shape
    h = tpe.num_heads
    gain = (tpe.q.double() * tpe.k.double()).view(h, -1).sum(-1)
    y = apply_toeplitz(T, x.view(b, L, h, -1)) * gain[None, None, :, None]    # [B, L, H, Dh]
    y = y / torch.sqrt(y.pow(2).mean(-1, keepdim=True) + tpe.norm.eps)
    y = y.reshape(b, L, c) * tpe.norm.weight.double()
    return y @ tpe.o_proj.weight.double().T


def test_tpe_matches_formula():
    torch.manual_seed(0)
    tpe = Tpe(12, 3, chunk=4)
    x = torch.randn(2, 9, 12)
    lam = torch.sigmoid(tpe.log_decay).tolist()
    torch.testing.assert_close(tpe(x).double(), naive_tpe(tpe, x, toeplitz(lam, 9, "sym")), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(tpe(x, bidirectional=False).double(), naive_tpe(tpe, x, toeplitz(lam, 9, "causal")),
                               rtol=1e-4, atol=1e-5)


def grid_toeplitz(lam, hh, ww, axis):
    """[H, n, n] over the row-major grid: λ^{|r-r'|} within a column (axis 0) or λ^{|c-c'|} within a row (axis 1)."""
    n = hh * ww
    T = torch.zeros(len(lam), n, n, dtype=torch.float64)
    for h, l in enumerate(lam):
        for t in range(n):
            for s in range(n):
                (r, c), (r2, c2) = divmod(t, ww), divmod(s, ww)
                if axis == 0 and c == c2:
                    T[h, t, s] = l ** abs(r - r2)
                if axis == 1 and r == r2:
                    T[h, t, s] = l ** abs(c - c2)
    return T


def test_md_tpe_embed_matches_per_axis_toeplitz_on_grid_with_prefix():
    torch.manual_seed(0)
    hh, ww, c = 3, 4, 8
    md = MdTpe(c, 2, chunk=2)
    x = torch.randn(2, 1 + hh * ww, c)
    out = md.embed(x, Positions.grid_2d(hh, ww, num_prefix=1))
    ref = x[:, 1:].double().clone()
    for axis, tpe in enumerate(md.tpes):
        lam = torch.sigmoid(tpe.log_decay).tolist()
        ref = ref + naive_tpe(tpe, x[:, 1:], grid_toeplitz(lam, hh, ww, axis))
    torch.testing.assert_close(out[:, 1:].double(), ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out[:, 0], x[:, 0])                             # the prefix token is untouched


def test_md_tpe_is_translation_equivariant_on_the_grid():
    # content moved on a zero background: the mixed content moves with it (kernels depend on offsets only)
    torch.manual_seed(0)
    md = MdTpe(8, 2)
    img = torch.zeros(1, 8, 8, 8)
    img[:, 2:4, 2:4] = torch.randn(1, 2, 2, 8)
    moved = torch.roll(img, shifts=(3, 2), dims=(1, 2))
    pos = Positions.grid_2d(8, 8)
    a = md.embed(img.reshape(1, 64, 8), pos).reshape(1, 8, 8, 8)
    b = md.embed(moved.reshape(1, 64, 8), pos).reshape(1, 8, 8, 8)
    torch.testing.assert_close(a[:, 2:4, 2:4], b[:, 5:7, 4:6], rtol=1e-5, atol=1e-5)


def test_causal_sequence_form():
    torch.manual_seed(0)
    md = MdTpe(6, 2, num_axes=1)
    x = torch.randn(1, 7, 6)
    out = md.embed(x, Positions.sequence(7, causal=True))
    lam = torch.sigmoid(md.tpes[0].log_decay).tolist()
    torch.testing.assert_close(out.double(), x.double() + naive_tpe(md.tpes[0], x, toeplitz(lam, 7, "causal")),
                               rtol=1e-4, atol=1e-5)
    # a prefix of a causal sequence ignores what follows
    y = x.clone()
    y[:, 4:] = 50 * torch.randn(1, 3, 6)
    torch.testing.assert_close(md.embed(y, Positions.sequence(7, causal=True))[:, :4], out[:, :4])


def test_padded_tokens_do_not_leak():
    torch.manual_seed(0)
    md = MdTpe(6, 2, num_axes=1)
    x = torch.randn(1, 6, 6)
    mask = torch.tensor([[True] * 4 + [False] * 2])
    a = md.embed(x, Positions(mask=mask))
    y = x.clone()
    y[:, 4:] = 100 * torch.randn(1, 2, 6)
    b = md.embed(y, Positions(mask=mask))
    torch.testing.assert_close(a[:, :4], b[:, :4])
    torch.testing.assert_close(a[:, :4], md.embed(x[:, :4], None))


def test_gradients_reach_decay_and_vectors():
    md = MdTpe(8, 2)
    x = torch.randn(2, 12, 8, requires_grad=True)
    md.embed(x, Positions.grid_2d(3, 4)).square().mean().backward()
    for name, p in md.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert torch.isfinite(x.grad).all()


def test_long_sequence_has_no_n_by_n_intermediate(largest_tensor):
    n, c = 8192, 8
    md = MdTpe(c, 2, num_axes=1, chunk=32)
    x = torch.randn(1, n, c)
    with torch.no_grad(), largest_tensor() as probe:
        out = md.embed(x, None)
    assert torch.isfinite(out).all()
    assert probe.numel <= n * c                                                 # nothing beyond the token tensor


def test_bad_grid_raises():
    md = MdTpe(8, 2)
    with pytest.raises(ValueError, match="describes"):
        md.embed(torch.randn(1, 10, 8), Positions.grid_2d(3, 4))
    with pytest.raises(ValueError, match="divisible"):
        MdTpe(10, 3)
    with pytest.raises(ValueError):
        decayed_scan(torch.randn(2, 5, 3, 4), F.logsigmoid(torch.zeros(2)))
