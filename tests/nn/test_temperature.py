"""Query multipliers against closed forms computed here with math.log loops; YaRN's attention factor against HF's
formula written out; attention with scaled queries against a naive softmax(m * q k^T / sqrt(d) + bias) @ v; the
learnable head scale gets gradients; dtypes; clear errors."""
import math

import pytest
import torch
import torch.nn.functional as F

from zoo.errors import ConfigError
from zoo.nn.temperature import ConstantTemperature, HeadTemperature, LogLengthScale, yarn_attention_factor


def naive_attention(q, k, v, m, bias=None, causal=False):
    """softmax(m * q k^T / sqrt(d) + bias) @ v with loops over batch, head and query; m(h, i) a Python function."""
    b, h, n, d = q.shape
    out = torch.zeros_like(q)
    for bi in range(b):
        for hi in range(h):
            for i in range(n):
                logits = []
                for j in range(k.shape[2]):
                    s = m(hi, i) * float(q[bi, hi, i] @ k[bi, hi, j]) / math.sqrt(d)
                    if bias is not None:
                        s += float(bias[0, hi, i, j])
                    if causal and j > i:
                        s = -math.inf
                    logits.append(s)
                w = torch.softmax(torch.tensor(logits, dtype=q.dtype), dim=0)
                out[bi, hi, i] = w @ v[bi, hi]
    return out


# -- YaRN ---------------------------------------------------------------------------------------------------------

def hf_get_mscale(scale, mscale=1.0):
    # transformers.modeling_rope_utils._compute_yarn_parameters: 0.1 * mscale * ln(scale) + 1 for scale > 1, else 1
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


@pytest.mark.parametrize("factor, value", [(1, 1.0), (2, 1.0693147180559945), (4, 1.1386294361119891),
                                           (8, 1.2079441541679836)])
def test_yarn_attention_factor_matches_hf_formula(factor, value):
    assert value == pytest.approx(0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0, rel=1e-15)
    assert yarn_attention_factor(factor) == pytest.approx(value, rel=1e-14)
    # the equivalent query multiplier is the square (HF multiplies cos and sin by the factor)
    t = ConstantTemperature.yarn(factor)
    assert t.value == pytest.approx(value ** 2, rel=1e-14)
    m = t.multiplier(torch.arange(3), 4)
    assert m.dtype == torch.float32 and m.shape == (1, 1, 1, 1)
    assert float(m) == pytest.approx(value ** 2, rel=1e-7)


def test_yarn_factor_below_one_and_deepseek_ratio():
    assert yarn_attention_factor(0.5) == 1.0
    want = hf_get_mscale(40, 1.0) / hf_get_mscale(40, 0.707)
    assert yarn_attention_factor(40, mscale=1.0, mscale_all_dim=0.707) == pytest.approx(want, rel=1e-14)
    assert want != pytest.approx(hf_get_mscale(40), rel=1e-3)
    # equal mscale and mscale_all_dim cancel (DeepSeek-V3 style configs): factor 1
    assert yarn_attention_factor(40, mscale=0.707, mscale_all_dim=0.707) == pytest.approx(1.0, rel=1e-14)
    # HF: zeros count as absent -> plain get_mscale(factor)
    assert yarn_attention_factor(8, mscale=0, mscale_all_dim=0) == pytest.approx(hf_get_mscale(8), rel=1e-14)


def test_yarn_query_multiplier_equals_scaling_cos_and_sin():
    """Rotating q and k with cos and sin both multiplied by f gives the logits of f**2 * q, rotated unscaled."""
    torch.manual_seed(0)
    n, d, factor = 6, 8, 4.0
    f = yarn_attention_factor(factor)
    q, k = torch.randn(1, 1, n, d, dtype=torch.float64), torch.randn(1, 1, n, d, dtype=torch.float64)
    inv = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = torch.arange(n, dtype=torch.float64)[:, None] * inv[None]                        # [n, d/2]
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)

    def rotate(x, c, s):
        x1, x2 = x[..., : d // 2], x[..., d // 2:]
        return x * c + torch.cat([-x2, x1], -1) * s

    hf_logits = rotate(q, cos * f, sin * f) @ rotate(k, cos * f, sin * f).transpose(-1, -2)
    t = ConstantTemperature.yarn(factor)
    ours = t.scale_queries(rotate(q, cos, sin), torch.arange(n)) @ rotate(k, cos, sin).transpose(-1, -2)
    torch.testing.assert_close(ours, hf_logits, rtol=1e-6, atol=1e-6)                    # m is float32


# -- ConstantTemperature ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("tau", [0.5, 1.0, 3.0])
def test_constant_temperature(tau):
    torch.manual_seed(1)
    q = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    t = ConstantTemperature(tau)
    assert float(t.multiplier(torch.arange(5), 3)) == pytest.approx(1 / tau, rel=1e-7)
    torch.testing.assert_close(t.scale_queries(q, torch.arange(5)), q * (1 / tau), rtol=1e-7, atol=0)
    torch.testing.assert_close(t(q, torch.arange(5), layer=7), t.scale_queries(q, torch.arange(5)))


# -- LogLengthScale -----------------------------------------------------------------------------------------------

def test_log_length_scale_matches_closed_form():
    train_len = 16
    t = LogLengthScale(train_len)
    idx = [0, 1, 5, 14, 15, 16, 30, 255, 1000, 70000]
    m = t.multiplier(torch.tensor(idx), 4)
    assert m.dtype == torch.float32 and m.shape == (1, 1, len(idx), 1)
    want = [max(1.0, math.log(i + 1) / math.log(train_len)) for i in idx]
    assert m.flatten().tolist() == pytest.approx(want, rel=1e-6)
    # below and at the training length nothing changes; above it the scale grows like log n
    assert m.flatten()[:5].tolist() == [1.0] * 5
    assert float(m.flatten()[7]) == pytest.approx(2.0, rel=1e-6)                      # 256 = 16 ** 2


def test_log_length_scale_skips_the_first_layers():
    t = LogLengthScale(8, skip_layers=2)
    idx = torch.tensor([0, 20, 100])
    for layer in (0, 1):
        assert bool((t.multiplier(idx, 2, layer=layer) == 1).all())
    m = t.multiplier(idx, 2, layer=2).flatten().tolist()
    assert m == pytest.approx([1.0, math.log(21) / math.log(8), math.log(101) / math.log(8)], rel=1e-6)
    abf = LogLengthScale.entropy_aware_abf()
    assert (abf.train_len, abf.skip_layers) == (4096, 2)
    got = abf.multiplier(torch.tensor([4095, 8191, 16383]), 1, layer=5).flatten().tolist()
    assert got == pytest.approx([1.0, math.log(8192) / math.log(4096), math.log(16384) / math.log(4096)], rel=1e-6)


def test_log_length_scale_rows_of_a_chunk_and_a_cache_step_match_the_full_sequence():
    t = LogLengthScale(4)
    torch.manual_seed(2)
    q = torch.randn(1, 2, 12, 4)
    full = t.scale_queries(q, torch.arange(12))
    torch.testing.assert_close(t.scale_queries(q[:, :, 5:9], torch.arange(5, 9)), full[:, :, 5:9], rtol=0, atol=0)
    torch.testing.assert_close(t.scale_queries(q[:, :, -1:], torch.tensor([11])), full[:, :, -1:], rtol=0, atol=0)


# -- HeadTemperature ----------------------------------------------------------------------------------------------

def test_head_temperature_shape_values_and_gradient():
    t = HeadTemperature(3, init=1.5)
    assert isinstance(t.scale, torch.nn.Parameter) and t.scale.dtype == torch.float32
    m = t.multiplier(torch.arange(4), 3)
    assert m.shape == (3, 1, 1) and m.flatten().tolist() == [1.5] * 3
    with torch.no_grad():
        t.scale.copy_(torch.tensor([0.5, 1.0, 2.0]))
    torch.manual_seed(3)
    q = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    out = t.scale_queries(q, torch.arange(4))
    torch.testing.assert_close(out, q * torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64).view(3, 1, 1))
    # gradient reaches the parameter: d/ds_h sum(q * s_h) = sum of head h's q
    out.sum().backward()
    want = q.sum(dim=(0, 2, 3)).float()
    torch.testing.assert_close(t.scale.grad, want, rtol=1e-5, atol=1e-5)
    assert bool((t.scale.grad != 0).all())


def test_head_temperature_gradient_through_attention():
    torch.manual_seed(4)
    t = HeadTemperature(2, init=1.2)
    q, k, v = (torch.randn(1, 2, 5, 4) for _ in range(3))
    out = F.scaled_dot_product_attention(t.scale_queries(q, torch.arange(5)), k, v, is_causal=True)
    (out * torch.randn_like(out)).sum().backward()
    assert t.scale.grad is not None and t.scale.grad.shape == (2,) and bool((t.scale.grad.abs() > 0).all())


def test_head_temperature_lower_bound():
    t = HeadTemperature(2, init=1.0, min_value=1.0)
    with torch.no_grad():
        t.scale.copy_(torch.tensor([0.5, 1.3]))
    assert t.multiplier(torch.arange(2), 2).flatten().tolist() == pytest.approx([1.0, 1.3])


# -- attention with scaled queries --------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["constant", "log", "head"])
def test_sdpa_on_scaled_queries_equals_naive_tempered_softmax(kind):
    torch.manual_seed(5)
    b, h, n, d = 2, 2, 6, 4
    q, k, v = (torch.randn(b, h, n, d, dtype=torch.float64) for _ in range(3))
    bias = torch.randn(1, h, n, n, dtype=torch.float64)                  # an additive position bias, left unscaled
    if kind == "constant":
        t, m = ConstantTemperature(0.7), (lambda hi, i: 1 / 0.7)
    elif kind == "log":
        t, m = LogLengthScale(2), (lambda hi, i: max(1.0, math.log(i + 1) / math.log(2)))
    else:
        t = HeadTemperature(h)
        with torch.no_grad():
            t.scale.copy_(torch.tensor([0.6, 1.7]))
        m = (lambda hi, i: [0.6, 1.7][hi])
    qs = t.scale_queries(q, torch.arange(n))
    for causal in (False, True):
        mask = bias
        if causal:
            mask = bias.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), -math.inf)
        out = F.scaled_dot_product_attention(qs, k, v, attn_mask=mask)
        want = naive_attention(q, k, v, m, bias=bias, causal=causal)
        torch.testing.assert_close(out, want, rtol=1e-6, atol=1e-6)     # multipliers are float32


def test_bf16_queries_stay_bf16_with_float32_multipliers():
    torch.manual_seed(6)
    q = torch.randn(1, 2, 7, 8).to(torch.bfloat16)
    for t in (ConstantTemperature(0.9), LogLengthScale(3), HeadTemperature(2, init=1.3)):
        m = t.multiplier(torch.arange(7), 2)
        assert m.dtype == torch.float32
        out = t.scale_queries(q, torch.arange(7))
        assert out.dtype == torch.bfloat16 and out.shape == q.shape
        # the product is taken in float32 and rounded once
        assert torch.equal(out, (q.float() * m.detach()).to(torch.bfloat16))


# -- errors -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("build, message", [
    (lambda: ConstantTemperature(0), r"ConstantTemperature: tau must be a finite number > 0, got 0"),
    (lambda: ConstantTemperature(-1.0), r"tau must be a finite number > 0, got -1.0"),
    (lambda: ConstantTemperature(float("nan")), r"tau must be a finite number > 0, got nan"),
    (lambda: ConstantTemperature(True), r"tau must be a finite number > 0, got True"),
    (lambda: LogLengthScale(1), r"LogLengthScale: train_len must be an int >= 2 .*got 1"),
    (lambda: LogLengthScale(4096.0), r"train_len must be an int >= 2 .*got 4096.0"),
    (lambda: LogLengthScale(4096, skip_layers=-1), r"skip_layers must be an int >= 0, got -1"),
    (lambda: HeadTemperature(0), r"HeadTemperature: num_heads must be an int >= 1, got 0"),
    (lambda: HeadTemperature(4, init=0.0), r"HeadTemperature: init must be a finite number > 0, got 0.0"),
    (lambda: HeadTemperature(4, min_value=-1), r"min_value must be a finite number > 0, got -1"),
    (lambda: yarn_attention_factor(0), r"yarn_attention_factor: factor must be a finite number > 0, got 0"),
    (lambda: yarn_attention_factor(4, mscale=1.0), r"mscale \(1.0\) and mscale_all_dim \(None\) only act together"),
    (lambda: yarn_attention_factor(4, mscale=-1, mscale_all_dim=1), r"mscale must be a number >= 0, got -1"),
    (lambda: ConstantTemperature.yarn(-2), r"factor must be a finite number > 0, got -2"),
])
def test_bad_arguments_raise_config_error_naming_them(build, message):
    with pytest.raises(ConfigError, match=message):
        build()


def test_bad_call_arguments():
    q = torch.randn(1, 2, 3, 4)
    with pytest.raises(ValueError, match="HeadTemperature has 3 heads but the queries have num_heads=2"):
        HeadTemperature(3).scale_queries(q, torch.arange(3))
    with pytest.raises(ValueError, match="q_idx must be a 1-D integer tensor"):
        ConstantTemperature(1.0).scale_queries(q, torch.arange(3.0))
    with pytest.raises(ValueError, match="q_idx has 4 indices but q has nq=3"):
        LogLengthScale(4).scale_queries(q, torch.arange(4))
    with pytest.raises(ValueError, match=r"q must be a float tensor \[b, h, nq, d\]"):
        LogLengthScale(4).scale_queries(q[0], torch.arange(3))
    with pytest.raises(ValueError, match="layer must be an int >= 0"):
        LogLengthScale(4).multiplier(torch.arange(3), 2, layer=-1)
    with pytest.raises(ValueError, match="absolute indices >= 0"):
        LogLengthScale(4).multiplier(torch.tensor([-1, 0]), 2)


def test_the_base_class_is_abstract():
    from zoo.nn.temperature import Temperature
    with pytest.raises(TypeError, match="abstract"):
        Temperature()
