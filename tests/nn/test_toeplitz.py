"""The fused Toeplitz attention (`zoo.nn.toeplitz`) against the direct form: an explicit ``[h, n, n]`` bias given to
SDPA (values and gradients of q, k, v and the table), and, over every registered encoding with ``bias_table``, the
table against the encoding's own ``bias`` and the fused attention against ``Attention(fused_bias=False)`` (outputs and
the gradients of every parameter, the encoding's included)."""
import pytest
import torch
import torch.nn.functional as F

import zoo.pe as pe
from zoo.errors import ConfigError
from zoo.nn import Attention, KVCache
from zoo.nn import toeplitz
from zoo.positions import Positions

H, D = 4, 8


def direct(q, k, v, table, scale, causal):
    """softmax(scale q k^T + bias) v with bias[h, i, j] = table[h, j - i + n - 1], built whole."""
    n = q.shape[-2]
    i = torch.arange(n)
    bias = table[:, (i[None, :] - i[:, None]) + n - 1][None]                    # [1, h, n, n]
    if causal:
        bias = bias.masked_fill(i[None, :] > i[:, None], float("-inf"))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)


@pytest.fixture
def small_blocks(monkeypatch):
    """Several query blocks at test sizes: the block loops and their edges are exercised."""
    monkeypatch.setattr(toeplitz, "CAUSAL_ROWS", 16)
    monkeypatch.setattr(toeplitz, "BLOCK_BYTES", 4 * 2 * H * 64 * 7)             # 7 rows at n = 64, b = 2


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n", [1, 5, 64, 100])
@pytest.mark.parametrize("learned", [False, True])
def test_equals_direct_form(small_blocks, causal, n, learned):
    g = torch.Generator().manual_seed(n)
    q, k, v = (torch.randn(2, H, n, D, generator=g, requires_grad=True) for _ in range(3))
    table = (torch.randn(H, 2 * n - 1, generator=g) * 2).requires_grad_(learned)
    out = toeplitz.toeplitz_attention(q, k, v, table, 0.3, causal)
    ref = direct(q, k, v, table, 0.3, causal)
    torch.testing.assert_close(out, ref, atol=2e-6, rtol=1e-5)
    grad = torch.randn(out.shape, generator=g)
    inputs = (q, k, v, table) if learned else (q, k, v)
    got = torch.autograd.grad(out, inputs, grad)
    want = torch.autograd.grad(ref, inputs, grad)
    for name, a, b in zip("qkvt", got, want):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4, msg=f"gradient of {name}")


def test_bf16_close_to_float32():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, H, 80, D, generator=g) for _ in range(3))
    table = torch.randn(H, 159, generator=g, requires_grad=True)
    qb, kb, vb = (t.bfloat16().requires_grad_() for t in (q, k, v))
    out = toeplitz.toeplitz_attention(qb, kb, vb, table, 0.35, False)
    assert out.dtype == torch.bfloat16
    ref = direct(q, k, v, table, 0.35, False)
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=3e-2)
    out.float().sum().backward()
    assert qb.grad.dtype == torch.bfloat16 and table.grad.dtype == torch.float32
    assert torch.isfinite(table.grad).all()


def test_heads_broadcast_table():
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, H, 9, D, generator=g) for _ in range(3))
    table = torch.randn(1, 17, generator=g, requires_grad=True)
    out = toeplitz.toeplitz_attention(q, k, v, table, 0.3)
    torch.testing.assert_close(out, direct(q, k, v, table.expand(H, -1), 0.3, False))
    out.sum().backward()
    assert table.grad.shape == (1, 17)


def test_bad_input_names_the_argument():
    q = torch.randn(1, H, 6, D)
    with pytest.raises(ValueError, match="table must be"):
        toeplitz.toeplitz_attention(q, q, q, torch.zeros(H, 6), 0.3)
    with pytest.raises(ValueError, match="q, k, v"):
        toeplitz.toeplitz_attention(q, q[..., :5, :], q, torch.zeros(H, 11), 0.3)
    meta = torch.empty(1, H, 6, D, device="meta")
    ok, why = toeplitz.available(meta)
    assert not ok and "CPU" in why
    with pytest.raises(RuntimeError, match="CPU"):
        toeplitz.toeplitz_attention(meta, meta, meta, torch.zeros(H, 11, device="meta"), 0.3)


# ---- over the registry --------------------------------------------------------------------------------------------

def _table_encodings():
    names = []
    for name in pe.list_pe(positions="1d"):
        for causal in (False, True):
            enc = _make(name, causal)
            if enc is not None and enc.has_bias and enc.has_bias_table:
                names.append((name, causal))
    return names


def _make(name, causal):
    geometry = dict(dim=H * D, head_dim=D, num_heads=H, causal=causal, max_len=48, depth=2)
    torch.manual_seed(0)
    try:
        enc = pe.build({"name": name, **pe.example_kwargs(name, **geometry)}, **geometry)
    except (ConfigError, ValueError, TypeError):
        return None
    for p in enc.parameters():                                                   # move off the zero initialisation
        with torch.no_grad():
            p.add_(torch.randn_like(p) * 0.3)
    return enc


TABLE_ENCODINGS = _table_encodings()


def test_registry_has_the_toeplitz_encodings():
    names = {n for n, _ in TABLE_ENCODINGS}
    assert {"alibi", "t5", "kerple_log", "kerple_power", "fire", "sandwich"} <= names


@pytest.mark.parametrize("name,causal", TABLE_ENCODINGS)
@pytest.mark.parametrize("n", [1, 7, 40])
def test_table_equals_bias(name, causal, n):
    enc = _make(name, causal)
    q = torch.randn(2, H, n, D)
    table = enc.bias_table(n)
    if table is None:                                                            # not Toeplitz at this length
        return
    bias = enc.bias(q, q, None, D ** -0.5)                                       # [b|1, h, n, n]
    i = torch.arange(n)
    rows = table.expand(H, -1)[:, (i[None, :] - i[:, None]) + n - 1]            # [h, n, n]
    keep = (i[None, :] <= i[:, None]) if causal else torch.ones(n, n, dtype=torch.bool)
    torch.testing.assert_close(rows.expand_as(bias[0])[:, keep], bias[0][:, keep], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name,causal", TABLE_ENCODINGS)
def test_fused_attention_equals_direct(name, causal):
    """The same Attention with the fused path on and off: outputs and every parameter's gradient."""
    grads, outs = [], []
    x = torch.randn(2, 40, H * D, generator=torch.Generator().manual_seed(5))
    calls = []
    real = toeplitz.toeplitz_attention
    for fused in (True, False):
        torch.manual_seed(0)
        attn = Attention(H * D, H, pe=_make(name, causal), causal=causal)
        attn.fused_bias = fused
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(toeplitz, "toeplitz_attention", lambda *a, **kw: calls.append(fused) or real(*a, **kw))
            out = attn(x, Positions(ids=torch.arange(40).expand(2, 40)))
        out.square().mean().backward()
        outs.append(out.detach())
        grads.append({n: p.grad.clone() for n, p in attn.named_parameters() if p.grad is not None})
    torch.testing.assert_close(outs[0], outs[1], atol=2e-6, rtol=1e-5)
    assert calls == [True]                                                       # fused once, direct once
    assert grads[0].keys() == grads[1].keys()
    scale = max(g.abs().max() for g in grads[1].values())
    for key, want in grads[1].items():
        # a softmax ignores a bias constant over the keys: such gradients are rounding noise on both sides
        torch.testing.assert_close(grads[0][key], want, atol=1e-5 * float(scale), rtol=1e-4, msg=key)


def _fused_calls(attn, *args, **kwargs):
    calls = []
    real = toeplitz.toeplitz_attention
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(toeplitz, "toeplitz_attention", lambda *a, **kw: calls.append(1) or real(*a, **kw))
        attn(*args, **kwargs)
    return len(calls)


def test_where_the_fused_path_applies():
    torch.manual_seed(0)
    x = torch.randn(2, 12, H * D)
    attn = Attention(H * D, H, pe=pe.create("alibi", num_heads=H))
    assert _fused_calls(attn, x) == 1
    assert _fused_calls(attn, x, Positions(ids=torch.arange(12) + 5)) == 1      # shifted indices: same offsets
    # padding, non-consecutive or float positions, a KV cache, attention dropout: the direct form
    assert _fused_calls(attn, x, Positions(mask=torch.ones(2, 12, dtype=torch.bool))) == 0
    assert _fused_calls(attn, x, Positions(ids=torch.arange(12) * 2)) == 0
    assert _fused_calls(attn, x, Positions(ids=(torch.arange(12) * 2)[None])) == 0
    assert _fused_calls(attn, x, Positions(ids=torch.arange(12).float())) == 0
    rows = torch.stack([torch.arange(12), torch.arange(12) + 1])
    assert _fused_calls(attn, x, Positions(ids=rows)) == 0                        # rows differ
    dec = Attention(H * D, H, pe=pe.create("alibi", num_heads=H, causal=True), causal=True)
    cache = KVCache()
    assert _fused_calls(dec, x[:, :8], None, cache) == 1
    assert _fused_calls(dec, x[:, 8:9], Positions(ids=torch.arange(9)), cache) == 0
    drop = Attention(H * D, H, pe=pe.create("alibi", num_heads=H), attn_drop=0.1).train()
    assert _fused_calls(drop, x) == 0 and _fused_calls(drop.eval(), x) == 1
    off = Attention(H * D, H, pe=pe.create("alibi", num_heads=H))
    off.fused_bias = False
    assert _fused_calls(off, x) == 0


def test_causal_fire_beyond_its_threshold_is_not_toeplitz():
    fire = pe.create("fire", num_heads=H, causal=True, init_L=8.0)
    assert fire.bias_table(9) is not None and fire.bias_table(10) is None
    attn = Attention(H * D, H, pe=fire, causal=True)
    assert _fused_calls(attn, torch.randn(1, 9, H * D)) == 1
    assert _fused_calls(attn, torch.randn(1, 12, H * D)) == 0


def test_kernel_path_reports_the_forward_choice():
    alibi = Attention(H * D, H, pe=pe.create("alibi", num_heads=H))
    assert alibi.kernel_path(16) == "toeplitz" and _fused_calls(alibi, torch.randn(1, 16, H * D)) == 1
    alibi.fused_bias = False
    assert alibi.kernel_path(16) == "bias"
    assert alibi.kernel_path(16384).startswith("chunks of ")                     # 4 x 16k^2 floats > 256 MiB
    assert Attention(H * D, H).kernel_path(16) == "sdpa"
    assert Attention(H * D, H, pe=pe.create("rope", head_dim=D)).kernel_path(16) == "sdpa"
    fire = Attention(H * D, H, pe=pe.create("fire", num_heads=H, causal=True, init_L=8.0), causal=True)
    assert fire.kernel_path(9) == "toeplitz" and fire.kernel_path(12) == "bias"
    irpe_v = Attention(H * D, H, pe=pe.create("irpe", head_dim=D, num_heads=H, rpe_on="kv"))
    assert irpe_v.kernel_path(17) == "weights"
