"""PEG (CPVT, Chu et al., ICLR 2023): parity with timm's Twins PosConv, the paper's Algorithm 1, translation
equivariance, border awareness from zero padding, any grid size, Twins init, bad input."""
import math

import pytest
import torch
import torch.nn.functional as F

from zoo import Positions
from zoo.pe.base import PositionalEncoding
from zoo.pe.peg import PEG


def _randomize(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def _timm_posconv(dim, stride=1, seed=0):
    from timm.models.twins import PosConv
    ref = PosConv(dim, dim, stride=stride).eval()
    _randomize(ref, seed)
    return ref


@pytest.mark.parametrize("h,w", [(4, 4), (3, 5), (7, 2)])
def test_parity_with_timm_posconv(h, w):
    torch.manual_seed(0)
    dim = 12
    ref = _timm_posconv(dim)
    peg = PEG(dim).eval()
    assert set(peg.state_dict()) == set(ref.state_dict()) == {"proj.0.weight", "proj.0.bias"}
    peg.load_state_dict(ref.state_dict())
    x = torch.randn(2, 1 + h * w, dim)
    with torch.no_grad():
        out = peg.embed(x, Positions.grid_2d(h, w, num_prefix=1))
        want = ref(x[:, 1:], (h, w))
    assert out.shape == x.shape
    torch.testing.assert_close(out[:, 1:], want, atol=1e-6, rtol=1e-5)
    assert torch.equal(out[:, :1], x[:, :1])                                  # cls bypasses the conv
    # no prefix: the whole sequence is the grid (Twins / CPVT-GAP)
    with torch.no_grad():
        out0 = peg.embed(x[:, 1:], Positions.grid_2d(h, w))
    torch.testing.assert_close(out0, want, atol=1e-6, rtol=1e-5)


def test_parity_with_timm_posconv_stride2():
    dim, h, w = 8, 6, 5
    ref = _timm_posconv(dim, stride=2, seed=3)
    peg = PEG(dim, stride=2).eval()
    peg.load_state_dict(ref.state_dict())
    x = torch.randn(1, 2 + h * w, dim)
    with torch.no_grad():
        out = peg.embed(x, Positions.grid_2d(h, w, num_prefix=2))
        want = ref(x[:, 2:], (h, w))                                          # no residual when strided
    assert out.shape == (1, 2 + 3 * 3, dim)
    torch.testing.assert_close(out[:, 2:], want, atol=1e-6, rtol=1e-5)
    assert torch.equal(out[:, :2], x[:, :2])


def test_algorithm_1_explicit():
    # paper Algorithm 1 written with a functional depthwise conv, per channel, on a 3x4 grid
    dim, h, w = 5, 3, 4
    peg = PEG(dim, kernel_size=3)
    _randomize(peg, 7)
    x = torch.randn(1, 1 + h * w, dim)
    wt, bs = peg.proj[0].weight, peg.proj[0].bias
    feat = x[0, 1:].T.reshape(dim, h, w)
    pad = F.pad(feat, (1, 1, 1, 1))
    want = torch.empty(dim, h, w)
    for c in range(dim):
        for i in range(h):
            for j in range(w):
                want[c, i, j] = (pad[c, i:i + 3, j:j + 3] * wt[c, 0]).sum() + bs[c] + feat[c, i, j]
    with torch.no_grad():
        out = peg.embed(x, Positions.grid_2d(h, w, num_prefix=1))
    torch.testing.assert_close(out[0, 1:], want.reshape(dim, h * w).T, atol=1e-5, rtol=1e-5)


def test_translation_equivariance_in_the_interior():
    # content on a zero background, away from the borders: shifting the content shifts the output (bias everywhere
    # else), because a stride-1 zero-padded conv commutes with translation wherever the padding is not reached
    dim, H, W, k = 6, 12, 12, 3
    peg = PEG(dim, kernel_size=k).eval()
    _randomize(peg, 1)
    content = torch.randn(1, dim, 6, 6)
    canvas = torch.zeros(1, dim, H, W)
    canvas[..., 3:9, 3:9] = content
    shifted = torch.roll(canvas, shifts=(2, -1), dims=(2, 3))                   # content at rows 5..10, cols 2..7
    assert torch.equal(shifted[..., 5:11, 2:8], content)
    pos = Positions.grid_2d(H, W)

    def run(img):
        with torch.no_grad():
            out = peg.embed(img.flatten(2).transpose(1, 2), pos)               # [1, H*W, C]
        return out.transpose(1, 2).reshape(1, dim, H, W)

    a, b = run(canvas), run(shifted)
    torch.testing.assert_close(torch.roll(a, shifts=(2, -1), dims=(2, 3)), b, atol=1e-6, rtol=1e-5)
    # and a PEG is not position-blind: content moved to touch the border is encoded differently
    edge = torch.roll(canvas, shifts=(-3, 0), dims=(2, 3))                     # rows 0..5: the padding is reached
    c = run(edge)
    assert not torch.allclose(torch.roll(a, shifts=(-3, 0), dims=(2, 3)), c, atol=1e-3)


def test_zero_padding_reveals_the_border():
    # a constant feature map: interior outputs are all equal, border outputs differ (zero padding, as CPVT argues)
    dim, h, w = 4, 6, 7
    peg = PEG(dim)
    _randomize(peg, 2)
    x = torch.ones(1, h * w, dim)
    with torch.no_grad():
        out = peg.embed(x, Positions.grid_2d(h, w)).reshape(h, w, dim)
    interior = out[1:-1, 1:-1]
    torch.testing.assert_close(interior, interior[:1, :1].expand_as(interior))
    assert not torch.allclose(out[0, 0], out[2, 2], atol=1e-3)
    assert not torch.allclose(out[0, 3], out[2, 3], atol=1e-3)


@pytest.mark.parametrize("h,w", [(1, 1), (1, 9), (9, 1), (5, 13)])
def test_any_grid_size(h, w):
    dim = 8
    peg = PEG(dim, kernel_size=5)
    x = torch.randn(3, 1 + h * w, dim, requires_grad=True)
    out = peg.embed(x, Positions.grid_2d(h, w, num_prefix=1))
    assert out.shape == x.shape and torch.isfinite(out).all()
    out.square().sum().backward()
    assert peg.proj[0].weight.grad is not None and torch.isfinite(x.grad).all()
    # the grid is row-major: a single hot token spreads to its k x k neighbourhood only
    hot = torch.zeros(1, h * w, dim)
    r, c = h // 2, w // 2
    hot[0, r * w + c] = 1.0
    with torch.no_grad():
        y = (peg.embed(hot, Positions.grid_2d(h, w)) - peg.proj[0].bias).reshape(h, w, dim)
    rows, cols = torch.nonzero(y.abs().sum(-1) > 0, as_tuple=True)
    assert rows.min() >= r - 2 and rows.max() <= r + 2 and cols.min() >= c - 2 and cols.max() <= c + 2
    assert y[r, c].abs().sum() > 0


def test_twins_init():
    torch.manual_seed(0)
    dim = 512
    peg = PEG(dim)
    wt = peg.proj[0].weight
    assert wt.shape == (dim, 1, 3, 3) and peg.proj[0].bias.shape == (dim,)
    assert torch.count_nonzero(peg.proj[0].bias) == 0
    # fan_out = 3*3*dim / groups = 9  ->  std sqrt(2/9) ~ 0.471 (4608 samples: within 5%)
    assert wt.std().item() == pytest.approx(math.sqrt(2 / 9), rel=0.05)
    assert abs(wt.mean().item()) < 0.03
    peg5 = PEG(256, kernel_size=5)
    assert peg5.proj[0].weight.std().item() == pytest.approx(math.sqrt(2 / 25), rel=0.05)


def test_contract():
    peg = PEG(4)
    assert isinstance(peg, PositionalEncoding)
    assert peg.has_embed and not peg.has_bias and not peg.has_rotate and not peg.needs_weights
    assert "kernel_size=3" in repr(peg)


def test_token_count_mismatch_and_bad_input():
    peg = PEG(4)
    with pytest.raises(ValueError, match=r"3x3 plus 1 prefix token\(s\) is 10 tokens, but x has 9"):
        peg.embed(torch.randn(1, 9, 4), Positions.grid_2d(3, 3, num_prefix=1))
    with pytest.raises(ValueError, match="grid_size"):
        peg.embed(torch.randn(1, 9, 4), None)
    with pytest.raises(ValueError, match="grid_size"):
        peg.embed(torch.randn(1, 9, 4), Positions.sequence(9))
    with pytest.raises(ValueError, match=r"\[B, N, 4\]"):
        peg.embed(torch.randn(1, 9, 5), Positions.grid_2d(3, 3))
    with pytest.raises(ValueError, match="odd"):
        PEG(4, kernel_size=4)
    with pytest.raises(ValueError, match="dim"):
        PEG(0)
    with pytest.raises(ValueError, match="stride"):
        PEG(4, stride=0)
