"""RoPE scaling: parity with HF transformers' ROPE_INIT_FUNCTIONS (test-only import), closed forms, ScaledRoPE."""
import math

import pytest
import torch

from zoo import Positions
from zoo.pe.rope import RoPE, apply_rotary, interleaved_to_half, rope_angles, rope_inv_freq
from zoo.pe.rope_scaling import ScaledRoPE, rope_frequencies

import transformers


# ---- HF reference helpers (transformers only here, never in zoo/) ------------------------------------------------
def hf_config(params, head_dim=64, mpe=4096, base=10000.0):
    from transformers import LlamaConfig
    params = dict(params)
    params.setdefault("rope_theta", base)
    return LlamaConfig(hidden_size=head_dim * 4, num_attention_heads=4, head_dim=head_dim,
                       max_position_embeddings=mpe, rope_parameters=params)


def hf_frequencies(params, head_dim=64, mpe=4096, base=10000.0, seq_len=None):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
    cfg = hf_config(params, head_dim, mpe, base)
    kind = cfg.rope_parameters["rope_type"]
    if kind == "default":
        return LlamaRotaryEmbedding.compute_default_rope_parameters(cfg)
    return ROPE_INIT_FUNCTIONS[kind](cfg, "cpu", seq_len=seq_len)


def hf_rotate(params, q, k, position_ids, head_dim, mpe, rotary=None):
    """q/k [b, h, n, d] rotated by HF's LlamaRotaryEmbedding + apply_rotary_pos_emb (rotate-half layout)."""
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb
    rotary = rotary or LlamaRotaryEmbedding(hf_config(params, head_dim, mpe))
    cos, sin = rotary(q, position_ids)
    return apply_rotary_pos_emb(q, k, cos, sin), rotary


LONG = [1.0 + 0.25 * t for t in range(32)]
SHORT = [1.0 + 0.01 * t for t in range(32)]
CASES = [  # (id, params, head_dim, mpe, base, seq_len)
    ("default", {"rope_type": "default"}, 64, 4096, 10000.0, None),
    ("linear", {"rope_type": "linear", "factor": 2.0}, 64, 4096, 10000.0, None),
    ("linear-legacy-type", {"type": "linear", "factor": 4.0}, 64, 4096, 10000.0, None),
    ("dynamic-init", {"rope_type": "dynamic", "factor": 4.0}, 64, 4096, 10000.0, None),
    ("dynamic-4096", {"rope_type": "dynamic", "factor": 4.0}, 64, 4096, 10000.0, 4096),
    ("dynamic-16384", {"rope_type": "dynamic", "factor": 4.0}, 64, 4096, 10000.0, 16384),
    ("dynamic-partial", {"rope_type": "dynamic", "factor": 2.0, "partial_rotary_factor": 0.5}, 64, 2048, 10000.0, 5000),
    ("yarn", {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096}, 128, 16384, 10000.0, None),
    ("yarn-no-truncate", {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096,
                          "truncate": False}, 128, 16384, 10000.0, None),
    ("yarn-mscale", {"rope_type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096, "mscale": 1.0,
                     "mscale_all_dim": 0.8, "beta_fast": 32, "beta_slow": 1}, 64, 163840, 10000.0, None),
    ("yarn-betas-attn", {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 2048,
                         "beta_fast": 16.0, "beta_slow": 2.0, "attention_factor": 1.5}, 64, 16384, 500000.0, None),
    # omp > 2 pi base: the slow correction dim lies past the last pair, HF clamps it at dim - 1 (not dim/2 - 1)
    ("yarn-high-clamp", {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096}, 32, 16384,
     500.0, None),
    ("yarn-omp-default", {"rope_type": "yarn", "factor": 2.0}, 64, 4096, 10000.0, None),
    ("yarn-partial", {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024,
                      "partial_rotary_factor": 0.5}, 128, 4096, 10000.0, None),
    ("longrope-short", {"rope_type": "longrope", "short_factor": SHORT, "long_factor": LONG,
                        "original_max_position_embeddings": 4096}, 64, 131072, 10000.0, None),
    ("longrope-at-original", {"rope_type": "longrope", "short_factor": SHORT, "long_factor": LONG,
                              "original_max_position_embeddings": 4096}, 64, 131072, 10000.0, 4096),
    ("longrope-long", {"rope_type": "longrope", "short_factor": SHORT, "long_factor": LONG,
                       "original_max_position_embeddings": 4096}, 64, 131072, 10000.0, 4097),
    ("longrope-factor", {"rope_type": "longrope", "short_factor": SHORT, "long_factor": LONG, "factor": 8.0,
                         "original_max_position_embeddings": 4096}, 64, 131072, 10000.0, 20000),
    ("longrope-partial", {"rope_type": "longrope", "short_factor": SHORT[:16], "long_factor": LONG[:16],
                          "original_max_position_embeddings": 2048, "partial_rotary_factor": 0.5}, 64, 8192, 10000.0,
     9000),
    ("llama3", {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}, 128, 131072, 500000.0, None),
    ("llama3-small", {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 2.0, "high_freq_factor": 8.0,
                      "original_max_position_embeddings": 1024}, 64, 8192, 10000.0, None),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_matches_hf_rope_init_functions(case):
    _, params, head_dim, mpe, base, seq_len = case
    ref_inv, ref_attn = hf_frequencies(params, head_dim, mpe, base, seq_len)
    inv, attn = rope_frequencies(head_dim, base, params, seq_len=seq_len, max_position_embeddings=mpe)
    assert inv.dtype == torch.float32 and inv.shape == ref_inv.shape
    torch.testing.assert_close(inv, ref_inv.float(), rtol=1e-6, atol=0)
    assert isinstance(attn, float)
    assert attn == pytest.approx(float(ref_attn), rel=1e-12)


# ---- closed forms, written from the papers independently of both implementations ---------------------------------
def plain(dim, base=10000.0):
    return torch.tensor([base ** (-2 * t / dim) for t in range(dim // 2)], dtype=torch.float64)


def test_linear_and_dynamic_closed_form():
    inv, attn = rope_frequencies(8, scaling={"rope_type": "linear", "factor": 4.0})
    torch.testing.assert_close(inv.double(), plain(8) / 4, rtol=1e-7, atol=0)
    assert attn == 1.0
    # dynamic NTK: below and at the original length unchanged, above it base' = base * (f*S/L - (f-1))^(d/(d-2))
    dyn = {"rope_type": "dynamic", "factor": 2.0}
    for s in (None, 100, 512):
        torch.testing.assert_close(rope_frequencies(8, scaling=dyn, seq_len=s, max_position_embeddings=512)[0],
                                   rope_inv_freq(8), rtol=1e-7, atol=0)
    inv, _ = rope_frequencies(8, scaling=dyn, seq_len=1024, max_position_embeddings=512)
    torch.testing.assert_close(inv.double(), plain(8, 10000.0 * 3.0 ** (8 / 6)), rtol=1e-7, atol=0)


def test_yarn_closed_form():
    d, omp, f = 128, 4096, 4.0
    inv, attn = rope_frequencies(d, scaling={"rope_type": "yarn", "factor": f, "original_max_position_embeddings": omp})
    assert attn == pytest.approx(0.1 * math.log(4.0) + 1)                # sqrt(1/t) = 0.1 ln s + 1 (YaRN eq. 22)
    # pair t turns omp / (2 pi base^(2t/d)) times over the original length; > 32 turns: extrapolate, < 1: interpolate
    low = math.floor(d * math.log(omp / (32 * 2 * math.pi)) / (2 * math.log(10000)))
    high = math.ceil(d * math.log(omp / (1 * 2 * math.pi)) / (2 * math.log(10000)))
    assert (low, high) == (20, 46)
    ref = plain(d)
    torch.testing.assert_close(inv[:low + 1].double(), ref[:low + 1], rtol=1e-7, atol=0)
    torch.testing.assert_close(inv[high:].double(), ref[high:] / f, rtol=1e-7, atol=0)
    t = 33
    gamma = 1 - (t - low) / (high - low)                                  # share kept at full frequency
    assert inv[t].item() == pytest.approx((gamma * ref[t] + (1 - gamma) * ref[t] / f).item(), rel=1e-6)
    _, attn = rope_frequencies(d, scaling={"rope_type": "yarn", "factor": 40.0, "mscale": 1.0, "mscale_all_dim": 0.5,
                                           "original_max_position_embeddings": omp})
    assert attn == pytest.approx((0.1 * math.log(40) + 1) / (0.05 * math.log(40) + 1))


def test_longrope_and_llama3_closed_form():
    p = {"rope_type": "longrope", "short_factor": [1.0, 2.0], "long_factor": [3.0, 5.0],
         "original_max_position_embeddings": 100}
    short, attn = rope_frequencies(4, scaling=p, max_position_embeddings=400)
    long, attn2 = rope_frequencies(4, scaling=p, seq_len=101, max_position_embeddings=400)
    torch.testing.assert_close(short.double(), torch.tensor([1.0, 0.01 / 2.0], dtype=torch.float64))
    torch.testing.assert_close(long.double(), torch.tensor([1 / 3.0, 0.01 / 5.0], dtype=torch.float64))
    assert attn == attn2 == pytest.approx(math.sqrt(1 + math.log(4) / math.log(100)))
    # llama3: wavelength 2 pi / inv below omp/high unchanged, above omp/low divided by factor, smooth in between
    q = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
         "original_max_position_embeddings": 64}
    inv, _ = rope_frequencies(16, scaling=q)
    ref = plain(16)
    wl = 2 * math.pi / ref
    for t in range(8):
        if wl[t] < 16:
            expect = ref[t]
        elif wl[t] > 64:
            expect = ref[t] / 8
        else:
            s = (64 / wl[t] - 1) / 3
            expect = (1 - s) * ref[t] / 8 + s * ref[t]
        assert inv[t].item() == pytest.approx(expect.item(), rel=1e-6), t
    assert wl[0] < 16 <= wl[1] and wl[2] <= 64 < wl[3]                     # all three regimes are exercised


# ---- bad input ----------------------------------------------------------------------------------------------------
BAD = [
    ({"rope_type": "yarn", "original_max_position_embeddings": 1024}, "factor"),
    ({"rope_type": "yarn", "factor": 0.5, "original_max_position_embeddings": 1024}, "factor"),
    ({"rope_type": "linear", "factor": 0.5}, "factor"),
    ({"rope_type": "linear"}, "factor"),
    ({"rope_type": "dynamic", "factor": "2"}, "factor"),
    ({"rope_type": "ntk"}, "rope_type"),
    ({"rope_type": "yarn", "type": "linear", "factor": 2.0}, "type"),
    ({"rope_type": "yarn", "factor": 2.0, "mscale": 0.7}, "mscale_all_dim"),
    ({"rope_type": "yarn", "factor": 2.0, "beta_fast": 1, "beta_slow": 32}, "beta_fast"),
    ({"rope_type": "yarn", "factor": 2.0, "truncate": "yes"}, "truncate"),
    ({"rope_type": "linear", "factor": 2.0, "low_freq_factor": 1.0}, "low_freq_factor"),
    ({"rope_type": "longrope", "short_factor": [1.0] * 3, "long_factor": [1.0] * 4, "factor": 2.0}, "short_factor"),
    ({"rope_type": "longrope", "short_factor": [1.0] * 4, "factor": 2.0}, "long_factor"),
    ({"rope_type": "longrope", "short_factor": [1.0] * 4, "long_factor": [1.0, 1.0, -1.0, 1.0], "factor": 2.0},
     "long_factor"),
    ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 4.0}, "low_freq_factor"),
    ({"rope_type": "llama3", "factor": 8.0, "high_freq_factor": 4.0}, "low_freq_factor"),
    ({"rope_type": "default", "rope_theta": 500000.0}, "rope_theta"),
    ({"rope_type": "default", "partial_rotary_factor": 0.4}, "partial_rotary_factor"),
    ({"rope_type": "default", "partial_rotary_factor": 1.5}, "partial_rotary_factor"),
    ("yarn", "scaling"),
]


@pytest.mark.parametrize("params,field", BAD, ids=[f"{i}-{b[1]}" for i, b in enumerate(BAD)])
def test_bad_scaling_raises_naming_the_field(params, field):
    with pytest.raises(ValueError, match=field):
        rope_frequencies(8, scaling=params, max_position_embeddings=2048)


def test_missing_lengths_raise():
    with pytest.raises(ValueError, match="max_position_embeddings"):
        rope_frequencies(8, scaling={"rope_type": "dynamic", "factor": 2.0})
    with pytest.raises(ValueError, match="original_max_position_embeddings"):
        rope_frequencies(8, scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                     "high_freq_factor": 4.0})
    with pytest.raises(ValueError, match="factor"):
        rope_frequencies(8, scaling={"rope_type": "longrope", "short_factor": [1.0] * 4, "long_factor": [1.0] * 4,
                                     "original_max_position_embeddings": 64})
    with pytest.raises(ValueError, match="rot_dim"):
        ScaledRoPE(64, rot_dim=16, scaling={"rope_type": "linear", "factor": 2.0, "partial_rotary_factor": 0.5})
    with pytest.raises(ValueError, match="factor"):                     # validated at construction
        ScaledRoPE(64, scaling={"rope_type": "yarn"}, max_position_embeddings=4096)


# ---- ScaledRoPE -----------------------------------------------------------------------------------------------------
def test_scaled_rope_without_scaling_is_rope():
    torch.manual_seed(0)
    q, k = torch.randn(2, 2, 9, 16), torch.randn(2, 2, 9, 16)
    for layout in ("half", "interleaved"):
        a = RoPE(16, layout=layout, rot_dim=8).rotate(q, k, None)
        b = ScaledRoPE(16, layout=layout, rot_dim=8).rotate(q, k, None)
        torch.testing.assert_close(b, a, atol=0, rtol=0)


@pytest.mark.parametrize("params", [
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 512},
    {"rope_type": "linear", "factor": 2.0},
], ids=["yarn", "llama3", "linear"])
def test_scaled_rope_matches_hf_forward(params):
    torch.manual_seed(1)
    q, k = torch.randn(1, 2, 6, 32), torch.randn(1, 2, 6, 32)
    ids = torch.tensor([[0, 1, 2, 1000, 3000, 4095]])
    (hq, hk), _ = hf_rotate(params, q, k, ids, 32, 4096)
    rope = ScaledRoPE(32, scaling=params, max_position_embeddings=4096)
    rq, rk = rope.rotate(q, k, Positions(ids=ids))
    # HF rounds the frequencies in float32 arithmetic, we round once from float64: 1 ulp of a frequency is up to
    # 4095 * 6e-8 rad at position 4095
    torch.testing.assert_close(rq, hq, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(rk, hk, atol=1e-4, rtol=1e-5)
    if params["rope_type"] == "yarn":                                    # the attention factor reached cos and sin
        assert rope.attention_factor == pytest.approx(0.1 * math.log(4) + 1)
        torch.testing.assert_close(rk.norm(dim=-1), k.norm(dim=-1) * rope.attention_factor, rtol=1e-5, atol=1e-5)


def test_dynamic_ntk_follows_sequence_length_like_hf():
    """HF recomputes at S = max(position_ids)+1 when S grows past the cache and resets below the original length."""
    params, mpe = {"rope_type": "dynamic", "factor": 4.0}, 256
    torch.manual_seed(2)
    q = k = torch.randn(1, 1, 4, 16)
    rope = ScaledRoPE(16, scaling=params, max_position_embeddings=mpe)
    rotary = None
    for last in (255, 256, 1000, 4095, 100):                           # at, just above, growing, reset below
        ids = torch.tensor([[0, 3, 50, last]])
        (hq, hk), rotary = hf_rotate(params, q, k, ids, 16, mpe, rotary)
        rq, rk = rope.rotate(q, k, Positions(ids=ids))
        torch.testing.assert_close(rk, hk, atol=1e-4, rtol=1e-5, msg=f"S={last + 1}")
        torch.testing.assert_close(rq, hq, atol=1e-4, rtol=1e-5, msg=f"S={last + 1}")
        # closed form: plain RoPE with base' (or the original base at or below the original length)
        s = max(last + 1, mpe)
        base = 10000.0 * (4.0 * s / mpe - 3.0) ** (16 / 14)
        ref = RoPE(16, base=base).rotate(q, k, Positions(ids=ids))[1]
        torch.testing.assert_close(rk, ref, atol=1e-5, rtol=1e-5)


def test_longrope_switches_sets_and_caches_stay_correct():
    params = {"rope_type": "longrope", "short_factor": [1.0, 1.5, 2.0, 2.5], "long_factor": [1.0, 3.0, 6.0, 9.0],
              "original_max_position_embeddings": 16}
    rope = ScaledRoPE(8, scaling=params, max_position_embeddings=64)
    torch.manual_seed(3)
    k = torch.randn(1, 1, 40, 8)

    def fresh(n):
        return ScaledRoPE(8, scaling=params, max_position_embeddings=64).rotate(k[..., :n, :], k[..., :n, :], None)[1]

    outs = {}
    for n in (12, 40, 12, 16, 17, 40):                                  # short, long, short again, boundary
        outs.setdefault(n, rope.rotate(k[..., :n, :], k[..., :n, :], None)[1])
        torch.testing.assert_close(rope.rotate(k[..., :n, :], k[..., :n, :], None)[1], fresh(n), atol=0, rtol=0)
    # the long set really differs from the short one on the same positions, the boundary 16 is still short
    assert not torch.allclose(outs[40][..., :12, :], outs[12], atol=1e-3)
    torch.testing.assert_close(outs[16][..., :12, :], outs[12], atol=0, rtol=0)
    assert not torch.allclose(outs[17][..., :12, :], outs[12], atol=1e-3)
    _, a = rope_frequencies(8, scaling=params, max_position_embeddings=64)
    assert rope.frequencies(seq_len=40)[1] == a == pytest.approx(math.sqrt(1 + math.log(4) / math.log(16)))
    torch.testing.assert_close(rope.inv_freq(seq_len=40), rope_frequencies(8, scaling=params, seq_len=40,
                                                                           max_position_embeddings=64)[0])


def test_dynamic_cache_with_growing_kv_cache():
    rope = ScaledRoPE(8, scaling={"rope_type": "dynamic", "factor": 2.0}, max_position_embeddings=8)
    torch.manual_seed(4)
    k = torch.randn(1, 1, 20, 8)
    for n in (6, 8, 9, 12, 20, 5):
        got = rope.rotate(k[..., n - 1:n, :], k[..., :n, :], None)      # one query over n cached keys
        ref = ScaledRoPE(8, scaling={"rope_type": "dynamic", "factor": 2.0},
                         max_position_embeddings=8).rotate(k[..., :n, :], k[..., :n, :], None)
        torch.testing.assert_close(got[1], ref[1], atol=0, rtol=0)
        torch.testing.assert_close(got[0], ref[0][..., -1:, :], atol=0, rtol=0)
    assert len(rope._cos_sin) <= 2                                        # fixed set + the latest dynamic set


def test_scaled_angles_float32_under_bf16_autocast():
    rope = ScaledRoPE(64, scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128})
    q = torch.ones(1, 1, 2, 64).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rq, _ = rope.rotate(q, q, Positions(ids=torch.tensor([256, 257])))
        cos, _ = rope.cos_sin(torch.tensor([256, 257]))
    assert cos.dtype == torch.float32
    assert rq.dtype == torch.bfloat16
    assert not torch.equal(rq[0, 0, 0], rq[0, 0, 1])
    ang = rope_angles(torch.tensor([256.0, 257.0]), rope.inv_freq())
    torch.testing.assert_close(cos, ang.cos() * rope.attention_factor)


@pytest.mark.parametrize("params,rot_dim", [
    ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}, None),
    ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "partial_rotary_factor": 0.5}, None),
    ({"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
      "original_max_position_embeddings": 16}, 4),
    ({"rope_type": "dynamic", "factor": 2.0}, 6),
])
def test_layouts_agree_after_converting_weights(params, rot_dim):
    torch.manual_seed(5)
    heads, d, c, n = 2, 8, 12, 20                                        # n > 16: above the original length
    wq, wk, x = torch.randn(heads * d, c), torch.randn(heads * d, c), torch.randn(1, n, c)
    r = ScaledRoPE(d, scaling=params, rot_dim=rot_dim, max_position_embeddings=16).rot_dim

    def scores(wq, wk, layout):
        q = (x @ wq.T).reshape(1, n, heads, d).transpose(1, 2)           # [b, h, n, d]
        k = (x @ wk.T).reshape(1, n, heads, d).transpose(1, 2)
        rope = ScaledRoPE(d, layout=layout, rot_dim=rot_dim, scaling=params, max_position_embeddings=16)
        q, k = rope.rotate(q, k, None)
        return q @ k.transpose(-2, -1)

    ref = scores(wq, wk, "interleaved")
    got = scores(interleaved_to_half(wq, d, r), interleaved_to_half(wk, d, r), "half")
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-5)
    assert not torch.allclose(scores(wq, wk, "half"), ref, atol=1e-2)


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_scaled_scores_depend_only_on_relative_position(layout):
    rope = ScaledRoPE(16, layout=layout, max_position_embeddings=64,
                      scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16})
    torch.manual_seed(6)
    q, k = torch.randn(1, 2, 5, 16), torch.randn(1, 2, 5, 16)
    ids = torch.tensor([0.0, 1.0, 4.0, 9.0, 30.0])
    a = rope.rotate(q, k, Positions(ids=ids))
    b = rope.rotate(q, k, Positions(ids=ids + 17))
    torch.testing.assert_close(a[0] @ a[1].transpose(-2, -1), b[0] @ b[1].transpose(-2, -1), atol=1e-4, rtol=1e-5)


def test_p_rope_on_scaled_frequencies():
    rope = ScaledRoPE(16, p=0.5, scaling={"rope_type": "linear", "factor": 2.0})
    inv = rope.inv_freq()
    torch.testing.assert_close(inv[:4], rope_inv_freq(16)[:4] / 2)
    assert inv[4:].eq(0).all()
    k = torch.randn(1, 1, 6, 16)
    _, rk = rope.rotate(k, k, None)
    torch.testing.assert_close(rk[..., 4:8], k[..., 4:8], atol=0, rtol=0)   # half layout: pairs (t, t+8), t >= 4
    torch.testing.assert_close(rk[..., 12:], k[..., 12:], atol=0, rtol=0)
    cos, sin = rope_angles(torch.arange(6), inv).cos(), rope_angles(torch.arange(6), inv).sin()
    torch.testing.assert_close(rk, apply_rotary(k, cos, sin, "half"))
