"""iRPE (Wu et al., ICCV 2021) against the paper's formulas, written here naively (Python loops, Python floats).

Nothing in this file's references calls zoo.pe.irpe: bucket ids come from `ref_g` / `ref_bucket`, attention
from explicit per-(i, j) loops. Official-code facts used (microsoft/Cream iRPE/DeiT-with-iRPE/irpe.py):
alpha, beta, gamma = ratio, 2 ratio, 8 ratio; the clip to a fractional beta truncates to int(beta);
round-half-to-even; prefix tokens share one extra, last bucket; rpe_k sees the scaled query,
rpe_q the scaled key with bucket[j, i]; rpe_v sums post-softmax weights times table rows.
"""
import math

import pytest
import torch

from zoo.nn import Attention
from zoo.pe.base import PositionalEncoding, overrides
from zoo.pe.irpe import IRPE, IRPEWithValue, irpe_bucket_ids, irpe_num_buckets, piecewise_index
from zoo.positions import Positions
from support.irpe import random_irpe


# ---- naive references -------------------------------------------------------------------------------------------

def ref_g(x, ratio):
    """Paper Eq. 18 with alpha, beta, gamma = ratio, 2 ratio, 8 ratio; Python's round() is half-to-even."""
    alpha, beta, gamma = ratio, 2 * ratio, 8 * ratio
    if abs(x) <= alpha:
        return int(round(x))
    v = alpha + math.log(abs(x) / alpha) / math.log(gamma / alpha) * (beta - alpha)
    v = min(beta, round(v))
    return int(math.copysign(v, x))  # int() truncates: a clipped fractional beta becomes int(beta)


def ref_num_buckets(method, ratio, skip):
    b = int(2 * ratio)
    n = (2 * b + 1) ** 2 if method == "product" else 2 * b + 1
    return n + (1 if skip > 0 else 0)


def ref_bucket(method, h, w, skip, ratio):
    """Bucket id of every (query, key) token pair, as nested lists, from a double loop over grid positions."""
    b = int(2 * ratio)
    extra = ref_num_buckets(method, ratio, 0)
    n = skip + h * w
    out = [[0] * n for _ in range(n)]
    for i in range(n):
        for j in range(n):
            if i < skip or j < skip:
                out[i][j] = extra
                continue
            ri, ci = divmod(i - skip, w)
            rj, cj = divmod(j - skip, w)
            dr, dc = ri - rj, ci - cj
            if method == "product":
                out[i][j] = (ref_g(dr, ratio) + b) * (2 * b + 1) + (ref_g(dc, ratio) + b)
            elif method == "euclidean":
                out[i][j] = ref_g(round(math.sqrt(dr * dr + dc * dc)), ratio) + b
            elif method == "quant":
                out[i][j] = ref_g(dr * dr + dc * dc, ratio) + b
            elif method == "cross_rows":
                out[i][j] = ref_g(dr, ratio) + b
            elif method == "cross_cols":
                out[i][j] = ref_g(dc, ratio) + b
    return out


def ref_attention(q, k, v, h, w, skip, ratio, method="product", wq=None, wk=None, wv=None, mode="contextual"):
    """softmax(q k^T s + rpe_k + rpe_q^T) v + rpe_v, one (i, j) pair at a time. Tables: (H|1, D, nb) for q/k
    (bias mode: (H|1, nb)), (H|1, nb, D) for v. ``method='cross'``: dicts {'rows': t, 'cols': t}."""
    bsz, nh, n, d = q.shape
    s = d ** -0.5
    parts = ["cross_rows", "cross_cols"] if method == "cross" else [method]
    ids = {m: ref_bucket(m, h, w, skip, ratio) for m in parts}

    def table(t, m):
        return t if method != "cross" else t["rows" if m == "cross_rows" else "cols"]

    logits = torch.zeros(bsz, nh, n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(n):
            val = (q[:, :, i] * s * k[:, :, j]).sum(-1)
            for m in parts:
                if wk is not None:
                    t = table(wk, m)
                    bid = ids[m][i][j]
                    val = val + (t[:, bid] if mode == "bias" else (q[:, :, i] * s * t[:, :, bid]).sum(-1))
                if wq is not None:
                    t = table(wq, m)
                    bid = ids[m][j][i]  # rpe_q: the key's bucket towards the query, then transposed
                    val = val + (t[:, bid] if mode == "bias" else (k[:, :, j] * s * t[:, :, bid]).sum(-1))
            logits[:, :, i, j] = val
    p = logits.softmax(-1)
    out = torch.zeros(bsz, nh, n, d, dtype=torch.float64)
    for i in range(n):
        for j in range(n):
            row = v[:, :, j]
            if wv is not None:
                for m in parts:
                    row = row + table(wv, m)[:, ids[m][i][j]]
            out[:, :, i] += p[:, :, i, j, None] * row
    return out


# ---- piecewise index ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ratio", [1.9, 2.0, 2.5, 3, 20, 33])
def test_piecewise_index_ints(ratio):
    xs = list(range(-40, 41))
    got = piecewise_index(torch.tensor(xs), ratio, 2 * ratio, 8 * ratio)
    assert got.dtype == torch.long
    assert got.tolist() == [ref_g(x, ratio) for x in xs]


def test_piecewise_index_pinned_ratio_1_9_and_2_0():
    got = piecewise_index(torch.arange(-14, 15), 1.9, 3.8, 15.2).tolist()
    assert got == [-3] * 11 + [-2, -2, -1, 0, 1, 2, 2] + [3] * 11
    got2 = piecewise_index(torch.arange(-14, 15), 2.0, 4.0, 16.0).tolist()
    assert got2[:5] == [-4] * 5 and got2[-5:] == [4] * 5           # |x| >= 10
    assert got2[5] == -3 and got2[-6] == 3                         # |x| = 9


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_piecewise_index_floats_half_to_even(dtype):
    xs = [0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49, 1.2, 2.9, 3.0, 3.5, 4.5, 5.3, 7.77, -9.1, 12.5, -25.0, 100.25]
    for ratio in (1.9, 3, 20):
        got = piecewise_index(torch.tensor(xs, dtype=dtype), ratio, 2 * ratio, 8 * ratio).tolist()
        assert got == [ref_g(x, ratio) for x in xs], ratio
    # the half-even cases themselves, spelled out (ratio 3: all inside alpha)
    assert piecewise_index(torch.tensor([0.5, 1.5, 2.5, -1.5], dtype=dtype), 3, 6, 24).tolist() == [0, 2, 2, -2]


# ---- bucket ids --------------------------------------------------------------------------------------------------

GEOMETRIES = [(14, 14, 1), (7, 9, 0), (5, 5, 2)]
METHOD_RATIOS = [("product", 1.9), ("euclidean", 20), ("quant", 33), ("cross_rows", 20), ("cross_cols", 20),
                 ("euclidean", 1.9), ("quant", 1.9), ("cross_rows", 1.9), ("cross_cols", 2.5), ("product", 2.0)]


@pytest.mark.parametrize("method,ratio", METHOD_RATIOS)
@pytest.mark.parametrize("h,w,skip", GEOMETRIES)
def test_bucket_ids_match_naive_loops(method, ratio, h, w, skip):
    ids, nb = irpe_bucket_ids(method, h, w, skip=skip, ratio=ratio)
    assert ids.dtype == torch.long and ids.shape == (skip + h * w, skip + h * w)
    assert nb == ref_num_buckets(method, ratio, skip)
    assert ids.tolist() == ref_bucket(method, h, w, skip, ratio)
    assert int(ids.max()) < nb
    if skip:
        assert (ids[:skip] == nb - 1).all() and (ids[:, :skip] == nb - 1).all()


def test_num_buckets_of_the_official_models():
    assert irpe_num_buckets("product", 1.9, skip=1) == 50      # product_50
    assert irpe_num_buckets("product", 1.9, skip=0) == 49
    assert irpe_num_buckets("euc", 20, skip=1) == 82           # euc_20: table 82
    assert irpe_num_buckets("quant", 33, skip=1) == 134        # quant_51: table 134
    assert irpe_num_buckets("cross", 20, skip=1) == 82         # cross_56: 82 per direction
    # the names count the buckets actually used at 14x14 + cls
    used = {m: irpe_bucket_ids(m, 14, 14, 1, r)[0].unique().numel()
            for m, r in [("product", 1.9), ("euclidean", 20), ("quant", 33), ("cross_rows", 20)]}
    assert used == {"product": 50, "euclidean": 20, "quant": 51, "cross_rows": 28}


def test_bucket_ids_cached_and_alias():
    a, _ = irpe_bucket_ids("product", 7, 9, 1)
    b, _ = irpe_bucket_ids("product", 7, 9, 1)
    assert a is b
    # the encoding's flat gather index is cached too, also for a prefix-free grid under a table with a prefix bucket
    pe = IRPE(8, 2, skip=1)
    for prefix in (1, 0):
        first = pe._index("product", prefix + 35, Positions.grid_2d(5, 7, num_prefix=prefix), "cpu")
        again = pe._index("product", prefix + 35, Positions.grid_2d(5, 7, num_prefix=prefix), "cpu")
        assert first[1] is again[1] and int(first[1].max()) < (prefix + 35) * 50
    assert irpe_bucket_ids("euc", 5, 5, 0, 20)[0] is irpe_bucket_ids("euclidean", 5, 5, 0, 20)[0]
    with pytest.raises(ValueError, match="unknown iRPE bucket method"):
        irpe_bucket_ids("bogus", 3, 3)
    with pytest.raises(ValueError, match="skip"):
        irpe_bucket_ids("product", 3, 3, skip=-1)


# ---- the encoding inside attention -------------------------------------------------------------------------------



def _tables(pe, method):
    def get(where):
        t = getattr(pe, f"rpe_{where}")
        if t is None:
            return None
        name = "lookup_table_bias" if pe.mode == "bias" else "lookup_table_weight"
        if method == "cross":
            return {"rows": getattr(t.rp_rows, name).double(), "cols": getattr(t.rp_cols, name).double()}
        return getattr(t, name).double()
    return dict(wq=get("q"), wk=get("k"), wv=get("v"))


def _qkv(b, nh, n, d, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, nh, n, d, generator=g) for _ in range(3)]


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("rpe_on", ["k", "q", "v", "qkv"])
def test_contextual_product_matches_naive(rpe_on, shared):
    h, w, skip, nh, d = 7, 9, 1, 4, 8
    n = skip + h * w
    pe = random_irpe(d, nh, shared=shared, rpe_on=rpe_on)
    assert pe.state_dict()[f"rpe_{rpe_on[0]}.lookup_table_weight"].shape[0] == (1 if shared else nh)
    attn = Attention(nh * d, nh, pe=pe)
    q, k, v = _qkv(2, nh, n, d)
    pos = Positions.grid_2d(h, w, num_prefix=skip)
    got = attn.attend(q, k, v, pos)
    want = ref_attention(q.double(), k.double(), v.double(), h, w, skip, 1.9, **_tables(pe, "product"))
    torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("method,mode,ratio,rpe_on,shared", [
    ("cross", "bias", 2.0, "qk", False),
    ("cross", "bias", 1.9, "k", True),
    ("cross", "contextual", 1.9, "kv", True),
    ("cross", "contextual", 20, "k", True),            # the paper's cross_56 model
    ("cross", "contextual", 2.5, "qkv", False),
    ("euclidean", "contextual", 1.9, "qk", False),
    ("euclidean", "contextual", 20, "k", True),        # euc_20
    ("euclidean", "contextual", 1.9, "qkv", True),
    ("euclidean", "bias", 3.0, "qk", False),
    ("quant", "bias", 1.9, "k", True),
    ("quant", "contextual", 33, "k", True),            # quant_51
    ("quant", "contextual", 1.9, "qkv", False),
    ("product", "bias", 1.9, "q", False),
    ("product", "bias", 2.0, "qk", True),
    ("product", "contextual", 3.0, "qv", False),       # any ratio, any placement
    ("product", "contextual", 1.2, "v", True),
])
def test_other_methods_and_bias_mode_match_naive(method, mode, ratio, rpe_on, shared):
    h, w, skip, nh, d = 5, 6, 2, 4, 8
    n = skip + h * w
    pe = random_irpe(d, nh, method=method, mode=mode, ratio=ratio, shared=shared, rpe_on=rpe_on, seed=3)
    q, k, v = _qkv(2, nh, n, d, seed=4)
    got = Attention(nh * d, nh, pe=pe).attend(q, k, v, Positions.grid_2d(h, w, num_prefix=skip))
    want = ref_attention(q.double(), k.double(), v.double(), h, w, skip, ratio, method=method, mode=mode,
                         **_tables(pe, method))
    torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=1e-5)


ALL_COMBINATIONS = [(method, mode, on, shared)
                    for method in ("euclidean", "quant", "cross", "product")
                    for mode in ("contextual", "bias")
                    for on in ("q", "k", "v", "qk", "qv", "kv", "qkv") if not (mode == "bias" and "v" in on)
                    for shared in (True, False)]


@pytest.mark.parametrize("method,mode,rpe_on,shared", ALL_COMBINATIONS)
def test_every_combination_matches_naive(method, mode, rpe_on, shared):
    """Every method x mode x placement x head sharing, on a 3x4 grid after 0, 1 or 2 prefix tokens; ratio 1.2
    reaches the logarithmic range of g (|x| >= 2) even on this small grid."""
    h, w, nh, d, ratio = 3, 4, 2, 4, 1.2
    skip = ALL_COMBINATIONS.index((method, mode, rpe_on, shared)) % 3
    pe = random_irpe(d, nh, method=method, mode=mode, ratio=ratio, shared=shared, skip=skip, rpe_on=rpe_on, seed=9)
    assert pe.needs_weights == ("v" in rpe_on)
    q, k, v = _qkv(1, nh, skip + h * w, d, seed=10)
    got = Attention(nh * d, nh, pe=pe).attend(q, k, v, Positions.grid_2d(h, w, num_prefix=skip))
    want = ref_attention(q.double(), k.double(), v.double(), h, w, skip, ratio, method=method, mode=mode,
                         **_tables(pe, method))
    torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("method,mode,rpe_on,table_skip", [
    ("product", "contextual", "qkv", 0),
    ("euclidean", "contextual", "qkv", 1),
    ("quant", "contextual", "qkv", 0),
    ("cross", "contextual", "qkv", 1),
    ("product", "bias", "qk", 1),
    ("cross", "bias", "qk", 0),
    ("euclidean", "bias", "qk", 0),
])
def test_per_head_tables_on_a_7x9_grid_match_naive(method, mode, rpe_on, table_skip):
    """Four heads with their own tables on a prefix-free 7x9 grid; a table built with a prefix bucket
    (table_skip=1) also serves it, its last bucket unused."""
    h, w, nh, d, ratio = 7, 9, 4, 8, 1.9
    pe = random_irpe(d, nh, method=method, mode=mode, ratio=ratio, shared=False, skip=table_skip, rpe_on=rpe_on,
                      seed=7)
    assert pe.num_buckets == ref_num_buckets(method if method != "cross" else "cross_rows", ratio, table_skip)
    for t in _tables(pe, method).values():
        for tt in (t.values() if isinstance(t, dict) else [t] if t is not None else []):
            assert tt.shape[0] == nh
    q, k, v = _qkv(2, nh, h * w, d, seed=8)
    got = Attention(nh * d, nh, pe=pe).attend(q, k, v, Positions.grid_2d(h, w, num_prefix=0))
    want = ref_attention(q.double(), k.double(), v.double(), h, w, 0, ratio, method=method, mode=mode,
                         **_tables(pe, method))
    torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=1e-5)
    heads_differ = (got[:, 0] - got[:, 1]).abs().max()
    assert heads_differ > 1e-3


def test_rpe_q_is_rpe_k_with_roles_swapped():
    """Official: rpe_q(k * s).transpose(2, 3). With the same table, the q-term for (q, k) is the transposed
    k-term for (k, q)."""
    nh, d, h, w = 2, 8, 4, 6
    on_k = random_irpe(d, nh, rpe_on="k", shared=False, seed=11)
    on_q = IRPE(d, nh, rpe_on="q", shared_head=False)
    on_q.load_state_dict({"rpe_q.lookup_table_weight": on_k.rpe_k.lookup_table_weight.detach()})
    q, k, _ = _qkv(2, nh, 1 + h * w, d, seed=12)
    pos = Positions.grid_2d(h, w, num_prefix=1)
    torch.testing.assert_close(on_q.bias(q, k, pos, 0.3), on_k.bias(k, q, pos, 0.3).transpose(-2, -1))


def test_full_attention_module_and_table_gradients_match_naive():
    """Through qkv/proj, and the gradient reaching the table through SDPA's attn_mask equals the naive one."""
    h, w, skip, nh, d = 4, 5, 1, 2, 8
    n, c = skip + h * w, nh * d
    pe = random_irpe(d, nh, rpe_on="k")
    attn = Attention(c, nh, pe=pe)
    x = torch.randn(2, n, c, generator=torch.Generator().manual_seed(5))
    out = attn(x, Positions.grid_2d(h, w, num_prefix=skip))
    out.square().sum().backward()
    g_fast = pe.rpe_k.lookup_table_weight.grad.clone()

    table = pe.rpe_k.lookup_table_weight.detach().double().requires_grad_(True)
    qkv = (x.double() @ attn.qkv.weight.double().T + attn.qkv.bias.double()).reshape(2, n, 3, nh, d)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    o = ref_attention(q, k, v, h, w, skip, 1.9, wk=table)
    o = o.transpose(1, 2).reshape(2, n, c) @ attn.proj.weight.double().T + attn.proj.bias.double()
    torch.testing.assert_close(out.double(), o, atol=1e-5, rtol=1e-5)
    o.square().sum().backward()
    torch.testing.assert_close(g_fast.double(), table.grad, atol=1e-4, rtol=1e-4)
    assert table.grad.abs().sum() > 0


def test_grid_defaults_to_square_root_rule_without_positions():
    """Official behaviour without explicit geometry: h = w = floor(sqrt(n)), skip = n - h*w."""
    nh, d = 2, 8
    pe = random_irpe(d, nh, rpe_on="qk")
    q, k, v = _qkv(1, nh, 1 + 36, d, seed=6)
    got = Attention(nh * d, nh, pe=pe).attend(q, k, v, None)
    want = ref_attention(q.double(), k.double(), v.double(), 6, 6, 1, 1.9, **_tables(pe, "product"))
    torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=1e-5)


# ---- properties --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rpe_on", ["k", "qkv"])
def test_zero_tables_equal_plain_attention(rpe_on):
    nh, d = 4, 8
    pe = IRPE(d, nh, rpe_on=rpe_on, shared_head=False)
    assert all((p == 0).all() for p in pe.parameters())   # zero init, as official
    q, k, v = _qkv(2, nh, 1 + 7 * 9, d)
    got = Attention(nh * d, nh, pe=pe).attend(q, k, v, Positions.grid_2d(7, 9, num_prefix=1))
    plain = ((q @ k.transpose(-2, -1)) * d ** -0.5).softmax(-1) @ v
    torch.testing.assert_close(got, plain, atol=1e-5, rtol=1e-5)


def test_bias_is_relative_depends_only_on_bucket():
    """With one shared query vector, the rpe_k logit of (i, j) is a function of bucket(i, j) alone; and two grid
    pairs with the same 2D offset get the same logit."""
    h, w, nh, d = 6, 7, 2, 8
    pe = random_irpe(d, nh, rpe_on="k", shared=False)
    n = 1 + h * w
    qrow = torch.randn(1, nh, 1, d)
    q = qrow.expand(1, nh, n, d).contiguous()
    bias = pe.bias(q, q, Positions.grid_2d(h, w, num_prefix=1), 1.0)[0]          # [nh, n, n]
    ids = ref_bucket("product", h, w, 1, 1.9)
    seen = {}
    for i in range(n):
        for j in range(n):
            key = ids[i][j]
            if key in seen:
                torch.testing.assert_close(bias[:, i, j], seen[key])
            else:
                seen[key] = bias[:, i, j]
    assert len(seen) == 50
    # translation on the grid: (1,1)->(2,3) and (3,2)->(4,4) share the offset (-1,-2)
    t = lambda r, c: 1 + r * w + c  # noqa: E731
    torch.testing.assert_close(bias[:, t(1, 1), t(2, 3)], bias[:, t(3, 2), t(4, 4)])
    assert not torch.allclose(bias[:, t(1, 1), t(2, 3)], bias[:, t(1, 1), t(1, 2)])


def test_value_path_never_builds_an_LxLxD_tensor(largest_tensor):
    h, w, nh, d = 7, 9, 1, 64
    n = 1 + h * w
    pe = random_irpe(d, nh, rpe_on="v")
    attn = torch.rand(1, nh, n, n).softmax(-1)
    pos = Positions.grid_2d(h, w, num_prefix=1)
    pe.value(attn, pos)  # warm the bucket cache
    with largest_tensor() as spy:
        out = pe.value(attn, pos)
    assert spy.numel < n * n * d, f"an intermediate of {spy.numel} elements (L*L*D = {n * n * d})"
    want = ref_attention(torch.zeros(1, nh, n, d, dtype=torch.float64), torch.zeros(1, nh, n, d, dtype=torch.float64),
                         torch.zeros(1, nh, n, d, dtype=torch.float64), h, w, 1, 1.9,
                         wv=pe.rpe_v.lookup_table_weight.double())  # uniform weights: mean of the rows
    uniform = torch.full((1, nh, n, n), 1.0 / n)
    torch.testing.assert_close(pe.value(uniform, pos).double(), want, atol=1e-5, rtol=1e-5)
    assert out.shape == (1, nh, n, d)


@pytest.mark.parametrize("method", ["product", "cross"])
def test_contextual_logits_are_matmul_then_gather(method, largest_tensor):
    """q/k contextual: (x @ W) -> [b, h, n, nb], then one gather; no [b, h, n, n, d] tensor."""
    h, w, nh, d = 7, 9, 2, 64
    n = 1 + h * w
    pe = random_irpe(d, nh, method=method, rpe_on="qk", shared=False)
    q, k, _ = _qkv(2, nh, n, d)
    pos = Positions.grid_2d(h, w, num_prefix=1)
    pe.bias(q, k, pos, 0.125)  # warm the bucket cache
    with largest_tensor() as spy:
        out = pe.bias(q, k, pos, 0.125)
    assert out.shape == (2, nh, n, n)
    assert spy.numel <= 2 * nh * n * n < 2 * nh * n * n * d


def test_only_value_encodings_force_the_slow_path():
    k = IRPE(8, 2, rpe_on="qk")
    kv = IRPE(8, 2, rpe_on="kv")
    assert type(k) is IRPE and isinstance(kv, IRPEWithValue) and isinstance(kv, IRPE)
    assert not overrides(k, "value") and not k.needs_weights and k.has_bias
    assert overrides(kv, "value") and kv.needs_weights
    assert isinstance(k, PositionalEncoding)
    assert set(k.state_dict()) == {"rpe_q.lookup_table_weight", "rpe_k.lookup_table_weight"}
    assert kv.rpe_q is None and set(kv.state_dict()) == {"rpe_k.lookup_table_weight", "rpe_v.lookup_table_weight"}
    assert kv.state_dict()["rpe_v.lookup_table_weight"].shape == (1, 50, 8)
    assert IRPE(8, 2, mode="bias", shared_head=False).state_dict()["rpe_k.lookup_table_bias"].shape == (2, 50)


def test_cache_built_under_inference_mode_still_trains():
    pe = random_irpe(8, 2, rpe_on="qkv")
    attn = Attention(16, 2, pe=pe)
    x = torch.randn(1, 1 + 3 * 11, 16)
    pos = Positions.grid_2d(3, 11, num_prefix=1)
    with torch.inference_mode():
        attn(x, pos)
    attn(x, pos).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in pe.parameters())


# ---- bad input ---------------------------------------------------------------------------------------------------

def test_grid_token_mismatch_names_both():
    pe = IRPE(8, 2)
    q = torch.randn(1, 2, 1 + 49, 8)
    with pytest.raises(ValueError, match=r"grid 7x8 \+ 1 prefix token\(s\) = 57 tokens.*50 tokens"):
        pe.bias(q, q, Positions.grid_2d(7, 8, num_prefix=1), 1.0)


def test_prefix_longer_than_sequence():
    pe = IRPE(8, 2)
    q = torch.randn(1, 2, 3, 8)
    with pytest.raises(ValueError, match="num_prefix=5.*exceed the sequence length 3"):
        pe.bias(q, q, Positions.grid_2d(1, 1, num_prefix=5), 1.0)


def test_prefix_tokens_need_a_skip_bucket():
    pe = IRPE(8, 2, skip=0)
    assert pe.num_buckets == 49
    q = torch.randn(1, 2, 1 + 16, 8)
    with pytest.raises(ValueError, match="skip=0"):
        pe.bias(q, q, Positions.grid_2d(4, 4, num_prefix=1), 1.0)


def test_constructor_rejects_bad_options():
    with pytest.raises(ValueError, match="method"):
        IRPE(8, 2, method="polar")
    with pytest.raises(ValueError, match="mode"):
        IRPE(8, 2, mode="sum")
    with pytest.raises(ValueError, match="rpe_on"):
        IRPE(8, 2, rpe_on="kx")
    with pytest.raises(ValueError, match="values"):
        IRPE(8, 2, mode="bias", rpe_on="kv")
    with pytest.raises(ValueError, match="queries"):
        q = torch.randn(1, 2, 10, 8)
        IRPE(8, 2).bias(q, q[:, :, :5], None, 1.0)
