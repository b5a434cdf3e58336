"""FlexAttention score_mods (zoo.nn.flex): parity with SDPA on the explicit bias (CPU inference here; CUDA forward
and backward on GPU machines), the in-kernel iRPE bucket against the bucket tables, refusals, and `IRPE.flex_attention`.

Each CPU parity test compiles one kernel (tens of seconds cold), so they are few and small."""
import pytest
import torch
import torch.nn.functional as F

from zoo.errors import ConfigError
from zoo.nn import Attention
from zoo.nn.flex import flex_available, irpe_flex_attention, irpe_product_bucket, toeplitz_flex_attention
from zoo.pe.irpe import IRPE, irpe_bucket_ids, piecewise_index
from zoo.positions import Positions

CPU_OK, CPU_WHY = flex_available("cpu")
needs_cpu_flex = pytest.mark.skipif(not CPU_OK, reason=f"FlexAttention on the CPU: {CPU_WHY}")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="FlexAttention forward + backward needs CUDA; checked on GPU only")


def _qkv(b, h, n, d, seed=0, device="cpu", grad=False):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=g).to(device).requires_grad_(grad) for _ in range(3)]


def _toeplitz_bias(table, n, causal):
    i = torch.arange(n, device=table.device)
    bias = table[:, (i[None, :] - i[:, None] + n - 1)][None]                    # [1, h|1, n, n]
    if causal:
        bias = bias.masked_fill(i[None, :] > i[:, None], float("-inf"))
    return bias


def _irpe_bias(lut, lut_q, gh, gw, prefix, ratio):
    ids, _ = irpe_bucket_ids("product", gh, gw, prefix, ratio, device=(lut if lut is not None else lut_q).device)
    n = ids.shape[0]
    bias = 0
    if lut is not None:
        b, h = lut.shape[:2]
        bias = bias + torch.gather(lut, 3, ids.expand(b, h, n, n))              # [b, h, i, j]: lut[i, bucket(i, j)]
    if lut_q is not None:
        b, h = lut_q.shape[:2]
        bias = bias + torch.gather(lut_q, 3, ids.expand(b, h, n, n)).transpose(-2, -1)   # lut_q[j, bucket(j, i)]
    return bias


# ---- the bucket computed from coordinates ------------------------------------------------------------------------

@pytest.mark.parametrize("ratio", [1.9, 2.0, 2.5, 3.0, 20.0])
def test_in_kernel_piecewise_index_matches_piecewise_index(ratio):
    from zoo.nn.flex import _piecewise
    x = torch.arange(-300, 301)
    want = piecewise_index(x, ratio, 2 * ratio, 8 * ratio)
    assert torch.equal(_piecewise(x, ratio), want)


@pytest.mark.parametrize("gh, gw, prefix, ratio", [(7, 9, 1, 1.9), (12, 5, 0, 2.0), (4, 6, 3, 2.5)])
def test_product_bucket_from_coordinates_equals_the_bucket_table(gh, gw, prefix, ratio):
    ids, nb = irpe_bucket_ids("product", gh, gw, prefix, ratio)
    n = ids.shape[0]
    i = torch.arange(n)
    assert torch.equal(irpe_product_bucket(i[:, None], i[None, :], gw, prefix, ratio), ids)


# ---- CPU inference parity with SDPA ------------------------------------------------------------------------------

@needs_cpu_flex
@pytest.mark.parametrize("causal, heads", [(False, 3), (True, 1)])
def test_toeplitz_matches_sdpa_with_the_explicit_bias(causal, heads):
    b, h, n, d = 2, 3, 80, 16
    q, k, v = _qkv(b, h, n, d)
    table = torch.randn(heads, 2 * n - 1)
    with torch.no_grad():
        got = toeplitz_flex_attention(q, k, v, table, scale=0.3, causal=causal)
        want = F.scaled_dot_product_attention(q, k, v, attn_mask=_toeplitz_bias(table, n, causal), scale=0.3)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@needs_cpu_flex
def test_irpe_with_prefix_tokens_matches_sdpa_and_reuses_the_kernel():
    from zoo.nn.flex import _irpe_kernel
    b, h, d, gh, gw, prefix, ratio = 2, 3, 16, 9, 11, 2, 1.9                   # n = 101; offsets reach the clip
    n = prefix + gh * gw
    q, k, v = _qkv(b, h, n, d)
    nb = irpe_bucket_ids("product", gh, gw, prefix, ratio)[1]
    lut, lut_q = torch.randn(b, h, n, nb), torch.randn(1, 1, n, nb)             # per (b, h) and broadcast
    with torch.no_grad():
        got = irpe_flex_attention(q, k, v, lut, (gh, gw), prefix, ratio, 0.25, lut_q=lut_q)
        want = F.scaled_dot_product_attention(q, k, v, attn_mask=_irpe_bias(lut, lut_q.expand(b, h, n, nb), gh, gw,
                                                                               prefix, ratio), scale=0.25)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
        hits = _irpe_kernel.cache_info().hits
        again = irpe_flex_attention(q, k, v, lut * 0.5, (gh, gw), prefix, ratio, 0.25, lut_q=lut_q)
    assert _irpe_kernel.cache_info().hits == hits + 1                            # same config: cached kernel
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=_irpe_bias(lut * 0.5, lut_q.expand(b, h, n, nb), gh, gw,
                                                                         prefix, ratio), scale=0.25)
    torch.testing.assert_close(again, want, atol=1e-4, rtol=1e-4)


@needs_cpu_flex
def test_irpe_encoding_flex_attention_equals_the_attention_sdpa_path():
    gh, gw, nh, d = 10, 12, 3, 16
    n = 1 + gh * gw
    pe = IRPE(d, nh, rpe_on="qk")
    with torch.no_grad():
        for p in pe.parameters():
            p.normal_()
    attn = Attention(nh * d, nh, pe=pe).eval()
    pos = Positions.grid_2d(gh, gw, num_prefix=1)
    q, k, v = _qkv(2, nh, n, d, seed=3)
    with torch.no_grad():
        got = pe.flex_attention(q, k, v, pos, attn.scale)
        want = attn._attend_rotated(q, k, v, pos)
    assert got is not None
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


# ---- where flex does not apply -----------------------------------------------------------------------------------

def test_irpe_encoding_flex_attention_declines_unsupported_cases():
    q, k, v = _qkv(1, 2, 17, 8)
    pos = Positions.grid_2d(4, 4, num_prefix=1)
    for pe in (IRPE(8, 2, rpe_on="kv"), IRPE(8, 2, mode="bias"), IRPE(8, 2, method="cross"),
               IRPE(8, 2, method="euclidean"), IRPE(8, 2, method="quant")):
        assert pe.flex_attention(q, k, v, pos, 0.3) is None
    pe = IRPE(8, 2)
    assert pe.flex_attention(q, k, v, pos, 0.3) is None                          # CPU, tables need a gradient
    masked = Positions.grid_2d(4, 4, num_prefix=1)
    masked.mask = torch.ones(1, 17, dtype=torch.bool)
    with torch.no_grad():
        assert pe.flex_attention(q, k, v, masked, 0.3) is None                   # padding: the SDPA path
        assert pe.flex_attention(q, k[..., :9, :], v[..., :9, :], None, 0.3) is None   # not self-attention


def test_refusals_name_the_argument():
    q, k, v = _qkv(1, 2, 17, 8)
    with torch.no_grad():
        with pytest.raises(ValueError, match="table must be"):
            toeplitz_flex_attention(q, k, v, torch.zeros(2, 17))
        with pytest.raises(ValueError, match="table must be"):
            toeplitz_flex_attention(q, k, v, torch.zeros(3, 33))
        with pytest.raises(ValueError, match="lut must be"):
            irpe_flex_attention(q, k, v, torch.zeros(1, 2, 17, 49), (4, 4), 1)    # no prefix bucket
        with pytest.raises(ValueError, match="lut_q must be"):
            irpe_flex_attention(q, k, v, None, (4, 4), 1, lut_q=torch.zeros(1, 2, 16, 50))
        with pytest.raises(ValueError, match="grid_hw 4x5"):
            irpe_flex_attention(q, k, v, torch.zeros(1, 2, 17, 50), (4, 5), 1)
        with pytest.raises(ValueError, match="grid_hw must be"):
            irpe_flex_attention(q, k, v, torch.zeros(1, 2, 17, 50), 4, 1)
        with pytest.raises(ValueError, match=r"give lut .* and/or lut_q"):
            irpe_flex_attention(q, k, v, None, (4, 4), 1)
        with pytest.raises(ValueError, match="v must be"):
            toeplitz_flex_attention(q, k, v[0], torch.zeros(2, 33))
        with pytest.raises(ValueError, match="dtype"):
            toeplitz_flex_attention(q.double(), k.double(), v.double(), torch.zeros(2, 33))
    ok, why = flex_available("cpu", requires_grad=True)
    assert not ok and "no CPU backward" in why
    assert not flex_available("meta")[0]
    if CPU_OK:
        qg = q.clone().requires_grad_()
        with pytest.raises(ConfigError, match="no CPU backward"):
            toeplitz_flex_attention(qg, k, v, torch.zeros(2, 33))


# ---- CUDA: forward and backward ---------------------------------------------------------------------------------

@needs_cuda
@pytest.mark.parametrize("causal", [False, True])
def test_toeplitz_forward_backward_on_cuda(causal):
    b, h, n, d = 2, 4, 200, 64
    q, k, v = _qkv(b, h, n, d, device="cuda", grad=True)
    table = torch.randn(h, 2 * n - 1, device="cuda", requires_grad=True)
    got = toeplitz_flex_attention(q, k, v, table, scale=0.125, causal=causal)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=_toeplitz_bias(table, n, causal), scale=0.125)
    torch.testing.assert_close(got, want, atol=2e-4, rtol=2e-4)
    w = torch.randn_like(got)
    g1 = torch.autograd.grad((got * w).sum(), [q, k, v, table])
    g0 = torch.autograd.grad((want * w).sum(), [q, k, v, table])
    for a, b_ in zip(g1, g0):
        torch.testing.assert_close(a, b_, atol=1e-3, rtol=1e-3)


@needs_cuda
def test_irpe_forward_backward_on_cuda():
    b, h, d, gh, gw, prefix, ratio = 2, 3, 64, 14, 14, 1, 1.9
    n = prefix + gh * gw
    q, k, v = _qkv(b, h, n, d, device="cuda", grad=True)
    nb = irpe_bucket_ids("product", gh, gw, prefix, ratio)[1]
    lut = torch.randn(b, h, n, nb, device="cuda", requires_grad=True)
    lut_q = torch.randn(b, h, n, nb, device="cuda", requires_grad=True)
    got = irpe_flex_attention(q, k, v, lut, (gh, gw), prefix, ratio, 0.125, lut_q=lut_q)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=_irpe_bias(lut, lut_q, gh, gw, prefix, ratio),
                                          scale=0.125)
    torch.testing.assert_close(got, want, atol=2e-4, rtol=2e-4)
    w = torch.randn_like(got)
    g1 = torch.autograd.grad((got * w).sum(), [q, k, v, lut, lut_q])
    g0 = torch.autograd.grad((want * w).sum(), [q, k, v, lut, lut_q])
    for a, b_ in zip(g1, g0):
        torch.testing.assert_close(a, b_, atol=1e-3, rtol=1e-3)


# ---- the attention's choice ------------------------------------------------------------------------------------

def _count(monkeypatch, module, name):
    calls = []
    real = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **kw: calls.append(1) or real(*a, **kw))
    return calls


@needs_cpu_flex
def test_attention_uses_flex_on_the_cpu_only_when_asked(monkeypatch):
    import zoo.nn.flex as flex
    import zoo.pe as pe
    calls = _count(monkeypatch, flex, "toeplitz_flex_attention")
    torch.manual_seed(0)
    attn = Attention(32, 4, pe=pe.create("kerple_log", num_heads=4, causal=True), causal=True).eval()
    x = torch.randn(2, 24, 32)
    with torch.no_grad():
        auto = attn(x)                                                           # CPU, automatic: not flex
        assert calls == []
        attn.flex = True
        forced = attn(x)
    assert calls == [1]
    attn.flex, attn.fused_bias = False, False
    with torch.no_grad():
        direct = attn(x)
    torch.testing.assert_close(forced, direct, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(auto, direct, atol=2e-6, rtol=1e-5)


@needs_cpu_flex
def test_attention_flex_for_contextual_irpe_equals_sdpa(monkeypatch):
    torch.manual_seed(0)
    enc = IRPE(8, 4, rpe_on="k")
    with torch.no_grad():
        enc.rpe_k.lookup_table_weight.normal_()
    attn = Attention(32, 4, pe=enc).eval()
    x = torch.randn(2, 37, 32)                                                   # 6 x 6 grid + 1 prefix token
    pos = Positions.grid_2d(6, 6, num_prefix=1)
    with torch.no_grad():
        want = attn(x, pos)
        attn.flex = True
        got = attn(x, pos)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_attention_flex_true_says_why_it_cannot_run():
    import zoo.pe as pe
    attn = Attention(32, 4, pe=pe.create("alibi", num_heads=4))
    attn.flex = True
    x = torch.randn(1, 8, 32, requires_grad=True)
    with pytest.raises(ConfigError, match="flex=True.*backward"):
        attn(x)                                                                  # CPU with a gradient
    with torch.no_grad(), pytest.raises(ConfigError, match="flex=True.*KV cache, padding"):
        attn(x, Positions(mask=torch.ones(1, 8, dtype=torch.bool)))


def test_automatic_flex_that_fails_falls_back_with_a_warning(monkeypatch):
    """The automatic choice (CUDA) must not break a model when FlexAttention fails to compile: it warns, falls back
    to the bias path and leaves that layer off FlexAttention; flex=True raises instead."""
    import zoo.nn.fused as fused
    import zoo.pe as pe

    def broken(*a, **kw):
        raise RuntimeError("backend compiler failed")
    monkeypatch.setattr(fused.flex, "toeplitz_flex_attention", broken)
    monkeypatch.setattr(fused.flex, "flex_available", lambda device, grad=False: (True, ""))
    monkeypatch.setattr(fused, "_wants_flex", lambda attn, q: attn.flex is not False)
    torch.manual_seed(0)
    attn = Attention(32, 4, pe=pe.create("alibi", num_heads=4))
    x = torch.randn(1, 8, 32)
    attn.fused_bias, attn.flex = False, False
    want = attn(x)
    attn.flex = None                                                             # automatic
    with pytest.warns(RuntimeWarning, match="FlexAttention failed.*SDPA"):
        got = attn(x)
    torch.testing.assert_close(got, want)
    assert attn.flex is False
    attn.flex = True
    with pytest.raises(RuntimeError, match="backend compiler failed"):
        attn(x)
