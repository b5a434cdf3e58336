"""LinearAttention (LightNet form) against a naive quadratic-form computation; padding; causal; never n x n."""
import math

import pytest
import torch

from zoo import Positions
from zoo.nn.linear_attention import LinearAttention
from zoo.pe import ALiBi
from zoo.pe.lrpe import MdLrpeCosine


def naive_angles(coords, d, base=10000.0, num_prefix=0):
    """Θ[token, channel]: channel ch belongs to axis ch // e and uses frequency base^(-2 (ch % e) / d)."""
    m = len(coords[0])
    e = math.ceil(d / m)
    rows = [[0.0] * d for _ in range(num_prefix)]
    for s in coords:
        rows.append([s[ch // e] * base ** (-2 * (ch % e) / d) for ch in range(d)])
    return torch.tensor(rows, dtype=torch.float64)


@torch.no_grad()
def naive(attn: LinearAttention, x, angles=None, key_valid=None, causal=False):
    """The LightNet token mixer written out with an explicit [n, n] score matrix, float64.

    score[t, s] = Σ_c silu(q)_tc · w_{s,t,c} · cos(Θ_tc − Θ_sc),  w_{s,t,c} = exp(k_sc) / Σ_{r visible to t} exp(k_rc)
    out_t = Σ_s score[t, s] v_s ;  then  * sigmoid(gate(x)),  RMSNorm,  proj."""
    x = x.double()
    b, n, c = x.shape
    h, d = attn.num_heads, attn.head_dim
    qkv = x @ attn.qkv.weight.double().T
    if attn.qkv.bias is not None:
        qkv = qkv + attn.qkv.bias.double()
    q, k, v = qkv.view(b, n, 3, h, d).permute(2, 0, 3, 1, 4)                   # [b, h, n, d]
    q = q * torch.sigmoid(q)
    out = torch.zeros(b, h, n, d, dtype=torch.float64)
    for bi in range(b):
        for t in range(n):
            visible = [s for s in range(n) if (key_valid is None or key_valid[bi, s]) and (not causal or s <= t)]
            for hi in range(h):
                z = sum(torch.exp(k[bi, hi, s]) for s in visible)               # [d]
                for s in visible:
                    w = torch.exp(k[bi, hi, s]) / z
                    rel = torch.ones(d, dtype=torch.float64) if angles is None else torch.cos(angles[t] - angles[s])
                    out[bi, hi, t] += (q[bi, hi, t] * w * rel).sum() * v[bi, hi, s]
    out = out.transpose(1, 2).reshape(b, n, c)
    if attn.gate is not None:
        out = out * torch.sigmoid(x @ attn.gate[0].weight.double().T @ attn.gate[1].weight.double().T)
    out = out / torch.sqrt(out.pow(2).mean(-1, keepdim=True) + attn.norm.eps) * attn.norm.weight.double()
    return out @ attn.proj.weight.double().T + attn.proj.bias.double()


def randomize(module):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return module


def test_matches_naive_without_pe():
    torch.manual_seed(0)
    attn = randomize(LinearAttention(8, 2))
    x = torch.randn(2, 7, 8)
    torch.testing.assert_close(attn(x).double(), naive(attn, x), rtol=1e-5, atol=1e-5)


def test_matches_naive_with_md_lrpe_on_a_grid_with_prefix():
    torch.manual_seed(0)
    attn = randomize(LinearAttention(12, 2, pe=MdLrpeCosine(6, 2, base=100.0)))
    pos = Positions.grid_2d(3, 4, num_prefix=1)
    x = torch.randn(2, 13, 12)
    angles = naive_angles(pos.grid.tolist(), 6, base=100.0, num_prefix=1)
    torch.testing.assert_close(attn(x, pos).double(), naive(attn, x, angles), rtol=1e-5, atol=1e-5)


def test_matches_naive_without_output_gate():
    torch.manual_seed(0)
    attn = randomize(LinearAttention(8, 2, output_gate=False, qkv_bias=False))
    x = torch.randn(1, 5, 8)
    assert attn.gate is None
    torch.testing.assert_close(attn(x).double(), naive(attn, x), rtol=1e-5, atol=1e-5)


def test_padded_keys_are_ignored():
    torch.manual_seed(0)
    attn = randomize(LinearAttention(8, 2))
    x = torch.randn(2, 6, 8)
    valid = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    pos = Positions(mask=valid)
    out = attn(x, pos)
    torch.testing.assert_close(out.double(), naive(attn, x, key_valid=valid), rtol=1e-5, atol=1e-5)
    # the real tokens of the padded sample do not see what sits in the padding ...
    x2 = x.clone()
    x2[1, 4:] = 100 * torch.randn(2, 8)
    torch.testing.assert_close(attn(x2, pos)[1, :4], out[1, :4])
    # ... and equal the unpadded sequence
    torch.testing.assert_close(attn(x[1:, :4])[0], out[1, :4], rtol=1e-5, atol=1e-6)
    # without the mask the padding does change them
    assert not torch.allclose(attn(x2)[1, :4], out[1, :4], atol=1e-3)


def test_fully_padded_sample_is_finite():
    attn = randomize(LinearAttention(8, 2))
    pos = Positions(mask=torch.tensor([[False] * 4]))
    assert torch.isfinite(attn(torch.randn(1, 4, 8), pos)).all()


@pytest.mark.parametrize("chunk", [3, 64])
def test_causal_matches_naive(chunk):
    torch.manual_seed(0)
    attn = randomize(LinearAttention(12, 2, pe=MdLrpeCosine(6, 2, base=100.0), causal=True, chunk=chunk))
    x = torch.randn(2, 10, 12)
    angles = naive_angles([[s] for s in range(10)], 6, base=100.0)
    torch.testing.assert_close(attn(x).double(), naive(attn, x, angles, causal=True), rtol=1e-5, atol=1e-5)
    # Positions.causal switches a non-causal module to the same result
    attn.causal = False
    torch.testing.assert_close(attn(x, Positions.sequence(10, 2, causal=True)).double(),
                               naive(attn, x, angles, causal=True), rtol=1e-5, atol=1e-5)


def test_causal_prefix_ignores_the_future():
    torch.manual_seed(0)
    attn = randomize(LinearAttention(8, 2, causal=True, chunk=4))
    x = torch.randn(1, 11, 8)
    y = x.clone()
    y[:, 7:] = torch.randn(1, 4, 8) * 10
    torch.testing.assert_close(attn(x)[:, :7], attn(y)[:, :7])


def test_backward_reaches_every_parameter():
    attn = LinearAttention(12, 2, pe=MdLrpeCosine(6, 2))
    x = torch.randn(2, 13, 12, requires_grad=True)
    attn(x, Positions.grid_2d(3, 4, num_prefix=1)).square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in attn.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_bias_encodings_are_rejected():
    with pytest.raises(ValueError, match="bias"):
        LinearAttention(8, 2, pe=ALiBi(2))


@pytest.mark.parametrize("causal", [False, True])
def test_16k_tokens_without_an_n_by_n_matrix(causal, largest_tensor):
    # softmax attention's [n, n] scores at n = 16384 would be 2.7e8 floats (1 GiB); here nothing exceeds a few n*d
    n, d = 16384, 16
    attn = LinearAttention(d, 1, pe=MdLrpeCosine(d, 1), causal=causal, chunk=256)
    pos = Positions.grid_2d(128, 128)
    x = torch.randn(1, n, d)
    with torch.no_grad(), largest_tensor() as probe:
        out = attn(x, pos)
    assert out.shape == (1, n, d) and torch.isfinite(out).all()
    assert probe.numel <= 3 * n * d, probe.numel               # the fused qkv output [n, 3d] (causal: + [256, 256])
    assert probe.numel < n * n // 100
