"""Query-chunked attention (zoo.nn.chunked): equal to the unchunked path, bias rows equal the full bias, and the
memory a long sequence needs is bounded by one chunk."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils._pytree import tree_flatten
from torch.utils._python_dispatch import TorchDispatchMode

from zoo import Positions
from zoo.nn import Attention, Block
from zoo.nn.attention import KVCache
from zoo.nn.chunked import plan_chunk_rows, query_blocks, run_query_chunks
from zoo.pe import PositionalEncoding
from zoo.pe.alibi import ALiBi, InterpolatedALiBi
from zoo.pe.bipe import BiPEALiBi
from zoo.pe.fire import FIRE
from zoo.pe.kerple import KerpleLog, KerplePower
from zoo.pe.randomized import RandomizedPE
from zoo.pe.shaw import ShawRPE
from zoo.pe.t5 import T5RelativeBias


@pytest.fixture(autouse=True)
def direct_form(monkeypatch):
    """These tests are about the query-chunked path: the fused Toeplitz kernel (tests/nn/test_toeplitz.py), which
    takes Toeplitz biases over token indices first, is switched off."""
    monkeypatch.setattr(Attention, "fused_bias", False)

H, D = 4, 8


class LearnedFullBias(PositionalEncoding):
    """A learnable [1, h, n, n] bias without a row form (exercises the fallback: full bias sliced per chunk)."""

    def __init__(self, n):
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(1, H, n, n) * 0.5)
        self.calls = 0

    def bias(self, q, k, pos, scale):
        self.calls += 1
        nq, nk = q.shape[-2], k.shape[-2]
        return self.table[..., nk - nq:nk, :nk]


ENCODINGS = {
    "alibi_causal": lambda n: ALiBi(H, causal=True),
    "alibi_bidir": lambda n: ALiBi(H, causal=False),
    "alibi_interp": lambda n: InterpolatedALiBi(H, causal=True, train_len=n // 2),
    "kerple_log": lambda n: KerpleLog(H, causal=False),
    "kerple_power_causal": lambda n: KerplePower(H, causal=True),
    "fire_causal": lambda n: FIRE(H, causal=True, init_L=8.0),
    "fire_bidir": lambda n: FIRE(H, causal=False, init_L=8.0),
    "t5": lambda n: T5RelativeBias(H, num_buckets=8, max_distance=16),
    "t5_causal": lambda n: T5RelativeBias(H, num_buckets=8, max_distance=16, bidirectional=False),
    "bipe_alibi": lambda n: BiPEALiBi(H, causal=True),
    "full_bias_fallback": lambda n: LearnedFullBias(n),
}
CAUSAL = {"alibi_causal", "alibi_interp", "kerple_power_causal", "fire_causal", "t5_causal", "bipe_alibi"}


def positions(n, b=2, causal=False, shift=0):
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[-1, n - 5:] = False                                                     # padding in the last row
    ids = (torch.arange(n) + shift).expand(b, n)
    seg = torch.div(torch.arange(n), 3, rounding_mode="floor").expand(b, n)      # BiPE segments
    return Positions(ids=ids, segments=seg, mask=mask, causal=causal)


def leaves(b, nq, nk, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, H, nq, D, generator=g).requires_grad_()
    k = torch.randn(b, H, nk, D, generator=g).requires_grad_()
    v = torch.randn(b, H, nk, D, generator=g).requires_grad_()
    return q, k, v


def run(attn, q, k, v, pos, chunk, cache_past=0):
    """Output and gradients (q, k, v, every PE parameter) of one attention call with ``chunk_size=chunk``."""
    attn.chunk_size = chunk
    if cache_past:
        cache = KVCache()
        cache.append(k[..., :cache_past, :], v[..., :cache_past, :])
        out = attn.attend_cached(q, k[..., cache_past:, :], v[..., cache_past:, :], pos, cache)
    else:
        out = attn.attend(q, k, v, pos)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    params = [p for p in attn.pe.parameters() if p.requires_grad]
    grads = torch.autograd.grad((out * w).sum(), [q, k, v] + params)
    return out.detach(), grads


@pytest.mark.parametrize("chunk", [8, 7])                                        # divides 40 / does not
@pytest.mark.parametrize("name", sorted(ENCODINGS))
def test_chunked_equals_unchunked(name, chunk):
    torch.manual_seed(0)
    n = 40
    pe = ENCODINGS[name](n)
    attn = Attention(H * D, H, pe=pe)
    pos = positions(n, causal=name in CAUSAL)
    q, k, v = leaves(2, n, n)
    out0, g0 = run(attn, q, k, v, pos, 0)
    calls0 = getattr(pe, "calls", None)
    out1, g1 = run(attn, q, k, v, pos, chunk)
    torch.testing.assert_close(out1, out0, atol=1e-5, rtol=1e-5)
    assert len(g0) >= 3 + (name not in {"alibi_causal", "alibi_bidir", "alibi_interp", "bipe_alibi"})
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    if calls0 is not None:                                                       # fallback: the full bias is
        assert pe.calls == calls0 + 1                                            # built once, not per chunk
        assert not pe.has_bias_rows


@pytest.mark.parametrize("name", ["kerple_log", "fire_causal", "t5_causal", "alibi_causal"])
def test_chunked_kv_cache_equals_unchunked(name):
    # queries are the last 12 of 30 keys; 18 come from the cache
    n, past = 30, 18
    pe = ENCODINGS[name](n)
    attn = Attention(H * D, H, pe=pe, causal=True)
    pos = positions(n, causal=True, shift=3)
    q, k, v = leaves(2, n - past, n)
    out0, g0 = run(attn, q, k, v, pos, 0, cache_past=past)
    out1, g1 = run(attn, q, k, v, pos, 5, cache_past=past)
    torch.testing.assert_close(out1, out0, atol=1e-5, rtol=1e-5)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(set(ENCODINGS) - {"full_bias_fallback"}))
@pytest.mark.parametrize("nq, start, c", [(23, 0, 7), (23, 9, 14), (17, 6, 5), (17, 22, 1)])
def test_bias_rows_equal_rows_of_full_bias(name, nq, start, c):
    # nk = 23 keys; for nq < nk the queries are the last nq keys (KV-cache layout); start is a key index
    nk = 23
    pe = ENCODINGS[name](nk)
    assert pe.has_bias_rows
    ids = torch.stack([torch.arange(nk) * 1.0, torch.arange(nk) * 2.0 + 5])       # per-row, non-unit spacing
    if isinstance(pe, T5RelativeBias):
        ids = ids.long()
    seg = torch.stack([torch.arange(nk) // 2, torch.arange(nk) // 4])
    pos = Positions(ids=ids, segments=seg)
    q, k, _ = leaves(2, nq, nk)
    full = pe.bias(q, k, pos, 0.3)                                               # [b|1, h, nq, nk]
    assert nk - nq <= start and start + c <= nk                                  # a block of the queries
    r = start - (nk - nq)
    rows = pe.bias_rows(q[..., r:r + c, :], k, pos, 0.3, start)
    assert rows.shape[-2:] == (c, nk)
    torch.testing.assert_close(rows, full[..., r:r + c, :], atol=1e-6, rtol=1e-6)


def test_bias_rows_without_ids_match_cached_eval_bias():
    for pe in (ALiBi(H, causal=True).eval(), T5RelativeBias(H).eval(), InterpolatedALiBi(H, factor=2.0)):
        q, k, _ = leaves(1, 16, 16)
        full = pe.bias(q, k, None, 1.0)
        torch.testing.assert_close(pe.bias_rows(q[..., 4:9, :], k, None, 1.0, 4), full[..., 4:9, :])


def test_bias_rows_rejects_blocks_outside_the_keys():
    q, k, _ = leaves(1, 4, 10)
    for pe in (ALiBi(H), KerpleLog(H), FIRE(H), T5RelativeBias(H), BiPEALiBi(H)):
        pos = Positions(segments=torch.arange(10))
        with pytest.raises(ValueError, match="does not fit"):
            pe.bias_rows(q, k, pos, 1.0, 7)


def test_has_bias_rows_only_where_the_row_form_matches_bias():
    class ScaledALiBi(ALiBi):                                                    # changes bias, not bias_rows
        def bias(self, q, k, pos, scale):
            return 2 * super().bias(q, k, pos, scale)

    assert ALiBi(H).has_bias_rows and InterpolatedALiBi(H, factor=2.0).has_bias_rows
    assert KerpleLog(H).has_bias_rows and FIRE(H).has_bias_rows and BiPEALiBi(H).has_bias_rows
    assert T5RelativeBias(H, unscaled_qk=True).has_bias_rows
    assert not ScaledALiBi(H).has_bias_rows
    assert not ShawRPE(D, values=False).has_bias_rows                           # not implemented (full bias)
    assert not RandomizedPE(ALiBi(H), max_length=64).has_bias_rows
    assert not PositionalEncoding().has_bias_rows


def test_automatic_chunking_uses_bias_rows_not_the_full_bias(monkeypatch):
    pe = KerpleLog(H)
    attn = Attention(H * D, H, pe=pe)
    calls = {"bias": 0, "rows": 0}
    bias, rows = pe.bias, pe.bias_rows
    monkeypatch.setattr(pe, "bias", lambda *a: calls.__setitem__("bias", calls["bias"] + 1) or bias(*a))
    monkeypatch.setattr(pe, "bias_rows", lambda *a: calls.__setitem__("rows", calls["rows"] + 1) or rows(*a))
    q, k, v = leaves(1, 32, 32)
    with torch.no_grad():
        attn.attend(q, k, v, None)                                               # 16 KiB: below the threshold
        assert calls["bias"] == 1                                                # (bias calls bias_rows itself)
        rows_before = calls["rows"]
        attn.max_bias_bytes = 1024
        attn.attend(q, k, v, None)
        assert calls["bias"] == 1 and calls["rows"] > rows_before                # rows only: no full bias


def test_plan_chunk_rows():
    assert plan_chunk_rows(1, 4, 4096, 4096) is None                              # 256 MiB: unchunked
    rows = plan_chunk_rows(1, 4, 16384, 16384)
    assert rows is not None and 16 <= rows <= 1024
    assert plan_chunk_rows(1, 4, 16384, 16384, floats_per_pair=100) < rows       # FIRE's MLP: smaller chunks
    assert plan_chunk_rows(1, 4, 16384, 16384, max_bias_bytes=None) is None
    assert list(query_blocks(10, 4)) == [(0, 4), (4, 8), (8, 10)]
    with pytest.raises(ValueError, match="chunk_size"):
        Attention(16, 2, chunk_size=-1)
    with pytest.raises(ValueError, match="chunk_size"):
        Attention(16, 2).chunk_size = 2.5


def test_recomputed_chunks_replay_dropout():
    q, k, v = leaves(1, 20, 20)

    def block(qc, k, v, s, e):
        w = F.dropout((qc @ k.transpose(-2, -1)).softmax(-1), 0.5, training=True)
        return w @ v

    res = []
    for recompute in (False, True):
        torch.manual_seed(3)
        out = run_query_chunks(block, q, k, v, 6, recompute=recompute, preserve_rng_state=True)
        res.append((out, torch.autograd.grad(out.square().sum(), [q, k, v])))
    torch.testing.assert_close(res[1][0], res[0][0], atol=0, rtol=0)
    for a, b in zip(res[1][1], res[0][1]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_block_chunked_under_bf16_autocast_matches_unchunked():
    torch.manual_seed(0)
    blk = Block(H * D, H, pe=FIRE(H, causal=False, init_L=8.0))
    x = torch.randn(2, 48, H * D)
    pos = positions(48)
    outs = []
    for chunk in (0, 10):
        blk.attn.chunk_size = chunk
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = blk(x, pos)
        y.float().sum().backward()
        outs.append((y.float().detach(), blk.attn.pe.c.grad.clone()))
        blk.zero_grad()
    torch.testing.assert_close(outs[1][0], outs[0][0], atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(outs[1][1], outs[0][1], atol=2e-2, rtol=5e-2)


# ---- memory -----------------------------------------------------------------------------------------------------

class LargestStorage(TorchDispatchMode):
    """The largest storage any op produces (forward and backward both run through the dispatcher)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.untyped_storage().nbytes())
        return out


def saved_storage_bytes(fn):
    """Bytes of the distinct storages autograd saves for backward while ``fn`` runs."""
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(seen.values()), out


@pytest.mark.parametrize("name", ["kerple_log", "t5", "alibi_bidir"])
def test_memory_is_bounded_by_one_chunk(name):
    # N = 2048, 4 heads: the full [h, N, N] float32 bias is 64 MiB, one chunk of 128 queries 4 MiB
    torch.manual_seed(0)
    n, chunk = 2048, 128
    full_bytes, chunk_bytes = H * n * n * 4, H * chunk * n * 4
    attn = Attention(H * D, H, pe=ENCODINGS[name](n))
    x = torch.randn(1, n, H * D, requires_grad=True)
    pos = positions(n, b=1)
    measured = {}
    for c in (0, chunk):
        attn.chunk_size = c
        saved, out = saved_storage_bytes(lambda: attn(x, pos))
        with LargestStorage() as mode:
            attn(x, pos).sum().backward()
        measured[c] = saved, mode.largest
    # the probes see the unchunked path's [h, N, N] tensors ...
    assert measured[0][0] >= full_bytes and measured[0][1] >= full_bytes
    # ... and nothing of that size in the chunked path, forward or backward
    saved, largest = measured[chunk]
    assert saved < 2 * chunk_bytes, (saved, chunk_bytes)
    assert largest <= 2 * chunk_bytes, (largest, chunk_bytes)
