"""RoPE (Su et al., RoFormer): pinned rotation, relative property, float32 angles, layout converters, attention."""
import math

import pytest
import torch

from zoo import Positions
from zoo.nn import Attention
from zoo.pe import RoPE, apply_rotary, half_to_interleaved, interleaved_to_half, rope_angles, rope_inv_freq


def rotate_loop(x, positions, layout, base=10000.0, rot_dim=None):
    """Reference: explicit 2x2 rotations, pair t at angle p * base^(-2t/r). x [..., n, d] float64."""
    x = x.double()
    d = x.shape[-1]
    r = d if rot_dim is None else rot_dim
    out = x.clone()
    for n, p in enumerate(positions):
        for t in range(r // 2):
            a = float(p) * base ** (-2 * t / r)
            i, j = (2 * t, 2 * t + 1) if layout == "interleaved" else (t, t + r // 2)
            xi, xj = x[..., n, i], x[..., n, j]
            out[..., n, i] = xi * math.cos(a) - xj * math.sin(a)
            out[..., n, j] = xj * math.cos(a) + xi * math.sin(a)
    return out


def test_inv_freq_pinned():
    torch.testing.assert_close(rope_inv_freq(8), torch.tensor([1.0, 10000 ** -0.25, 10000 ** -0.5, 10000 ** -0.75]))
    torch.testing.assert_close(rope_inv_freq(4, base=100.0), torch.tensor([1.0, 0.1]))
    with pytest.raises(ValueError, match="dim"):
        rope_inv_freq(7)


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_rotation_pinned_against_loop(layout):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 8)                                                 # [b, h, n, d]
    positions = [0, 1, 2, 17, 300]
    ang = rope_angles(torch.tensor(positions), rope_inv_freq(8))
    got = apply_rotary(x, ang.cos(), ang.sin(), layout)
    torch.testing.assert_close(got.double(), rotate_loop(x, positions, layout), atol=1e-5, rtol=0)


def test_interleaved_is_complex_multiplication():
    # RoFormer eq. 34: pairs (x_2t, x_2t+1) as complex numbers times e^{i p theta_t}
    x = torch.randn(4, 6)
    p = torch.arange(4).float()
    theta = 10000.0 ** (-torch.arange(0, 6, 2).double() / 6)
    z = torch.view_as_complex(x.double().reshape(4, 3, 2).contiguous()) * torch.polar(torch.ones(4, 3).double(),
                                                                                      p.double()[:, None] * theta)
    ang = rope_angles(p, rope_inv_freq(6))
    got = apply_rotary(x, ang.cos(), ang.sin(), "interleaved")
    torch.testing.assert_close(got.double(), torch.view_as_real(z).reshape(4, 6), atol=1e-5, rtol=0)


@pytest.mark.parametrize("layout", ["half", "interleaved"])
@pytest.mark.parametrize("shift", [5, 123, 2.5])
def test_scores_depend_only_on_relative_position(layout, shift):
    torch.manual_seed(1)
    rope = RoPE(16, layout=layout)
    q, k = torch.randn(2, 2, 7, 16), torch.randn(2, 2, 7, 16)
    ids = torch.tensor([0, 1, 2, 3, 5, 8, 13]).float()
    q1, k1 = rope.rotate(q, k, Positions(ids=ids))
    q2, k2 = rope.rotate(q, k, Positions(ids=ids + shift))
    s1, s2 = q1 @ k1.transpose(-2, -1), q2 @ k2.transpose(-2, -1)
    torch.testing.assert_close(s1, s2, atol=1e-4, rtol=1e-5)
    # and the rotation actually does something position-dependent
    assert not torch.allclose(s1, q @ k.transpose(-2, -1), atol=1e-2)


def test_angles_float32_under_bf16_autocast():
    inv = rope_inv_freq(64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ang = rope_angles(torch.tensor([256, 257]), inv)
        assert ang.dtype == torch.float32
        assert (ang[1] - ang[0]).abs()[0] == 1.0                               # highest frequency: exactly 1 rad
        q = torch.ones(1, 1, 258, 64).bfloat16()
        rq, _ = RoPE(64).rotate(q, q, None)
    assert not torch.equal(ang[0], ang[1])
    assert rq.dtype == torch.bfloat16
    assert not torch.equal(rq[0, 0, 256], rq[0, 0, 257])
    # the pitfall this guards against: in bf16 the two positions are the same number
    assert torch.tensor(256.0).bfloat16() == torch.tensor(257.0).bfloat16()


@pytest.mark.parametrize("rot_dim", [None, 4])
def test_layout_converters_give_identical_scores(rot_dim):
    torch.manual_seed(2)
    heads, d, c, n = 3, 8, 12, 6
    wq, wk = torch.randn(heads * d, c), torch.randn(heads * d, c)
    bq = torch.randn(heads * d)
    x = torch.randn(2, n, c)

    def scores(wq, wk, bq, layout):
        q = (x @ wq.T + bq).reshape(2, n, heads, d).transpose(1, 2)            # [b, h, n, d]
        k = (x @ wk.T).reshape(2, n, heads, d).transpose(1, 2)
        q, k = RoPE(d, layout=layout, rot_dim=rot_dim).rotate(q, k, None)
        return q @ k.transpose(-2, -1)

    ref = scores(wq, wk, bq, "interleaved")
    conv = [interleaved_to_half(w, d, rot_dim) for w in (wq, wk, bq)]
    torch.testing.assert_close(scores(*conv, "half"), ref, atol=1e-4, rtol=1e-5)
    # without the permutation the two layouts disagree
    assert not torch.allclose(scores(wq, wk, bq, "half"), ref, atol=1e-2)
    # and back
    back = [half_to_interleaved(w, d, rot_dim) for w in conv]
    for a, b in zip(back, (wq, wk, bq)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_converter_pinned_permutation():
    w = torch.arange(8).float()[:, None]                                       # one head, d = 8, rows labelled
    assert interleaved_to_half(w, 8).flatten().tolist() == [0, 2, 4, 6, 1, 3, 5, 7]
    assert half_to_interleaved(w, 8).flatten().tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    assert interleaved_to_half(w, 8, rot_dim=4).flatten().tolist() == [0, 2, 1, 3, 4, 5, 6, 7]
    with pytest.raises(ValueError, match="head_dim"):
        interleaved_to_half(torch.zeros(10, 3), 8)


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_partial_rotary_leaves_tail_untouched(layout):
    q, k = torch.randn(1, 2, 5, 12), torch.randn(1, 2, 5, 12)
    rq, rk = RoPE(12, layout=layout, rot_dim=4).rotate(q, k, None)
    torch.testing.assert_close(rq[..., 4:], q[..., 4:], atol=0, rtol=0)
    torch.testing.assert_close(rk[..., 4:], k[..., 4:], atol=0, rtol=0)
    fq, _ = RoPE(4, layout=layout).rotate(q[..., :4].contiguous(), k[..., :4].contiguous(), None)
    torch.testing.assert_close(rq[..., :4], fq)
    torch.testing.assert_close(rq[..., :4].double(), rotate_loop(q[..., :4], range(5), layout), atol=1e-5, rtol=0)


def test_batched_float_ids_and_kv_cache_alignment():
    rope = RoPE(8)
    q, k = torch.randn(2, 1, 4, 8), torch.randn(2, 1, 4, 8)
    ids = torch.tensor([[0.0, 0.5, 1.0, 1.5], [3.0, 4.0, 5.0, 6.0]])           # V2PE-style fractional steps
    rq, rk = rope.rotate(q, k, Positions(ids=ids))
    for b in range(2):
        torch.testing.assert_close(rq[b].double(), rotate_loop(q[b], ids[b].tolist(), "half"), atol=1e-5, rtol=0)
        torch.testing.assert_close(rk[b].double(), rotate_loop(k[b], ids[b].tolist(), "half"), atol=1e-5, rtol=0)
    # KV cache: 1 query over 4 keys takes the last position
    rq1, rk1 = rope.rotate(q[..., -1:, :], k, Positions(ids=ids))
    torch.testing.assert_close(rq1, rq[..., -1:, :])
    torch.testing.assert_close(rk1, rk)


def test_arange_cache():
    rope = RoPE(8)
    cos, sin = rope.cos_sin_range(10, "cpu")
    cos2, _ = rope.cos_sin_range(6, "cpu")
    assert cos2.data_ptr() == cos.data_ptr()                                    # sliced, not recomputed
    ang = rope_angles(torch.arange(6), rope_inv_freq(8))
    torch.testing.assert_close(cos2, ang.cos(), atol=0, rtol=0)
    torch.testing.assert_close(sin[:6], ang.sin(), atol=0, rtol=0)
    q = torch.randn(1, 1, 6, 8)
    torch.testing.assert_close(rope.rotate(q, q, None)[0], rope.rotate(q, q, Positions.sequence(6))[0])


def test_rope_bad_input():
    with pytest.raises(ValueError, match="layout"):
        RoPE(8, layout="gptj")
    with pytest.raises(ValueError, match="rot_dim"):
        RoPE(8, rot_dim=10)
    with pytest.raises(ValueError, match="rot_dim"):
        RoPE(8, rot_dim=3)
    with pytest.raises(ValueError, match="head_dim"):
        RoPE(8).rotate(torch.randn(1, 1, 2, 6), torch.randn(1, 1, 2, 6), None)
    with pytest.raises(ValueError, match="pos.ids"):
        RoPE(8).rotate(torch.randn(1, 1, 2, 8), torch.randn(1, 1, 2, 8), Positions.sequence(3))
    with pytest.raises(ValueError, match="rot_dim"):
        apply_rotary(torch.randn(2, 8), torch.zeros(2, 2), torch.zeros(2, 2), rot_dim=8)


@pytest.mark.parametrize("layout", ["half", "interleaved"])
@pytest.mark.parametrize("causal", [False, True])
def test_attention_with_rope_matches_naive(layout, causal):
    torch.manual_seed(3)
    b, n, c, h = 2, 6, 32, 4
    d = c // h
    attn = Attention(c, h, pe=RoPE(d, layout=layout), causal=causal).eval()
    x = torch.randn(b, n, c)
    with torch.no_grad():
        out = attn(x)
        q, k, v = (x @ attn.qkv.weight.T + attn.qkv.bias).reshape(b, n, 3, h, d).permute(2, 0, 3, 1, 4)
        q, k = rotate_loop(q, range(n), layout).float(), rotate_loop(k, range(n), layout).float()
        logits = q @ k.transpose(-2, -1) * d ** -0.5
        if causal:
            logits = logits.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
        ref = (logits.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c)
        ref = ref @ attn.proj.weight.T + attn.proj.bias
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


# ---- p-RoPE (Barbero et al., 2024, arXiv 2410.06205) ---------------------------------------------------------------
def test_p_rope_frequencies_pinned_and_match_hf_proportional():
    from zoo.pe.rope import p_rope_inv_freq
    inv = p_rope_inv_freq(rope_inv_freq(8), 0.5)
    torch.testing.assert_close(inv, torch.tensor([1.0, 10000 ** -0.25, 0.0, 0.0]))     # highest kept, lowest zeroed
    import transformers
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    for p, d in [(0.25, 64), (0.5, 128), (0.75, 32), (1.0, 16), (0.3, 20)]:
        cfg = LlamaConfig(hidden_size=4 * d, num_attention_heads=4, head_dim=d, rope_parameters={
            "rope_type": "proportional", "rope_theta": 10000.0, "partial_rotary_factor": p})
        ref, _ = ROPE_INIT_FUNCTIONS["proportional"](cfg, "cpu")
        torch.testing.assert_close(p_rope_inv_freq(rope_inv_freq(d), p), ref, rtol=1e-6, atol=0)


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_p_rope_lowest_pairs_unrotated(layout):
    torch.manual_seed(7)
    d, p = 16, 0.25                                                             # 2 of 8 pairs rotate
    q, k = torch.randn(1, 2, 6, d), torch.randn(1, 2, 6, d)
    rq, rk = RoPE(d, layout=layout, p=p).rotate(q, k, Positions(ids=torch.tensor([0.0, 3, 7, 100, 1000, 5000])))
    lowest = [t for t in range(2, 8)]
    chans = sum(([2 * t, 2 * t + 1] if layout == "interleaved" else [t, t + d // 2] for t in lowest), [])
    torch.testing.assert_close(rq[..., chans], q[..., chans], atol=0, rtol=0)
    torch.testing.assert_close(rk[..., chans], k[..., chans], atol=0, rtol=0)
    # their q.k is the same at every pair of positions (semantic channel); the kept pairs still rotate exactly as RoPE
    s_low = rq[..., chans] @ rk[..., chans].transpose(-2, -1)
    torch.testing.assert_close(s_low, q[..., chans] @ k[..., chans].transpose(-2, -1))
    kept = [c for c in range(d) if c not in chans]
    ref = rotate_loop(q, [0, 3, 7, 100, 1000, 5000], layout)
    torch.testing.assert_close(rq[..., kept].double(), ref[..., kept], atol=2e-4, rtol=0)
    assert not torch.allclose(rq[..., kept], q[..., kept], atol=1e-2)


def test_p_one_is_rope_and_p_zero_is_nope():
    torch.manual_seed(8)
    q, k = torch.randn(2, 2, 7, 12), torch.randn(2, 2, 7, 12)
    for layout in ("half", "interleaved"):
        a = RoPE(12, layout=layout, rot_dim=8).rotate(q, k, None)
        b = RoPE(12, layout=layout, rot_dim=8, p=1.0).rotate(q, k, None)
        torch.testing.assert_close(b, a, atol=0, rtol=0)
        q0, k0 = RoPE(12, layout=layout, p=0.0).rotate(q, k, Positions.sequence(7, batch=2, offset=40))
        torch.testing.assert_close(q0, q, atol=0, rtol=0)
        torch.testing.assert_close(k0, k, atol=0, rtol=0)
    with pytest.raises(ValueError, match="p "):
        RoPE(8, p=1.5)
    with pytest.raises(ValueError, match="p "):
        RoPE(8, p=True)


@pytest.mark.parametrize("layout", ["half", "interleaved"])
@pytest.mark.parametrize("rot_dim", [8, 6])
def test_apply_rotary_fixed_angle_backward_is_exact(layout, rot_dim):
    # the hand-written backward (inverse rotation) against numerical differentiation, partial rotary included
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 8, dtype=torch.float64, requires_grad=True)
    ang = torch.randn(5, rot_dim // 2, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: apply_rotary(t, ang.cos(), ang.sin(), layout), (x,))
    # broadcasting the angles over a batch that x does not have still gives x-shaped gradients
    cos, sin = ang.cos().expand(2, 1, 5, rot_dim // 2), ang.sin().expand(2, 1, 5, rot_dim // 2)
    x1 = torch.randn(1, 3, 5, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: apply_rotary(t, cos, sin, layout), (x1,))
