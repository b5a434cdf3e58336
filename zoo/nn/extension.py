"""Training-free context extension for RoPE decoders: causal attention whose relative positions are remapped so that
a model never sees a distance it was not trained on (or trained on too rarely).

    self_extend_attention   SelfExtend: far keys at floor-divided ("grouped") positions  (Jin et al., ICML 2024)
    string_attention        STRING: far distances shifted down onto well-trained ones     (An et al., ICLR 2025)
    lm_infinite_attention   LM-Infinite Lambda mask: local window + starting tokens at a capped distance
                                                                                          (Han et al., NAACL 2024)
    ms_poe_ratios / ms_poe_head_order / ms_poe_rotate
                            Ms-PoE: head h reads positions t / r_h                        (Zhang et al., 2024)

Each attention function takes q ``[b, h, nq, d]`` and k, v ``[b, h_kv, nk, d]`` *before* rotation (``h_kv`` divides
``h``: grouped-query keys are repeated), a RoPE module (anything with ``cos_sin(positions)`` and ``layout``, e.g.
`zoo.pe.rope.RoPE`) or a bare ``cos_sin`` function plus ``layout``, and the absolute token indices of the queries and
the keys (``q_idx`` ``[nq]``, ``k_idx`` ``[nk]``, integers).  Defaults: keys ``0..nk-1``, queries the last ``nq`` of
them, so a full forward (``nq == nk``), a chunk of query rows and a KV-cache step all use the same call.  A token's
rotary position is its index; each method only changes which positions enter ``<R(p_i) q_i, R(p_j) k_j>``.

How they are computed: every branch of a method is a full logit matrix (q and k rotated at that branch's positions,
one matmul), the branches are merged per ``(i, j)`` with ``torch.where`` from the index rule, masked causally and
normalised by one softmax in float32 (float64 stays float64); the probabilities are cast to v's dtype for the last
matmul.  Angles are float32 whatever the autocast dtype (`RoPE.cos_sin`).  This is the dense reference form:
``O(nq * nk)`` memory per head, no Python loop over tokens, any device; a fused kernel can be checked against it.
The official implementations merge two flash-attention calls by their log-sum-exp, which is the same softmax.

Errors: a bad size raises `ConfigError` naming the argument; mismatched tensors raise ValueError.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

from ..errors import ConfigError
from ..pe.rope import apply_rotary

__all__ = ["self_extend_attention", "string_attention", "lm_infinite_attention", "STRING_ATTENTION_FACTOR",
           "ms_poe_ratios", "ms_poe_head_order", "ms_poe_rotate"]

CosSin = Callable[[Tensor], Tuple[Tensor, Tensor]]

# the official STRING patch multiplies RoPE's cos and sin by 0.1 ln 2 + 1 (YaRN's factor for a 2x extension)
STRING_ATTENTION_FACTOR = 0.1 * math.log(2) + 1.0


# -- argument checks -----------------------------------------------------------------------------------------------

def _int_at_least(owner: str, name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{owner}: {name} must be an int >= {minimum}, got {value!r}")
    return value


def _rotary(owner: str, rope, layout: str) -> Tuple[CosSin, str]:
    """``(cos_sin, layout)`` of a RoPE module (its own layout wins) or of a bare ``cos_sin`` function."""
    fn = getattr(rope, "cos_sin", None)
    if callable(fn):
        return fn, getattr(rope, "layout", layout)
    if callable(rope):
        return rope, layout
    raise ValueError(f"{owner}: rope must be a RoPE module (with cos_sin(positions) and layout) or a function "
                     f"positions -> (cos, sin), got {type(rope).__name__}")


def _index(name: str, idx: Optional[Tensor], default: Tensor, n: int) -> Tensor:
    if idx is None:
        return default
    if not isinstance(idx, Tensor) or idx.ndim != 1 or idx.dtype.is_floating_point or idx.dtype == torch.bool:
        got = type(idx).__name__ if not isinstance(idx, Tensor) else f"{idx.dtype} {tuple(idx.shape)}"
        raise ValueError(f"{name} must be a 1-D integer tensor of absolute token indices, got {got}")
    if idx.shape[0] != n:
        raise ValueError(f"{name} has {idx.shape[0]} indices but the tensor has {n} positions")
    return idx.to(default.device)


def _prepare(owner: str, q: Tensor, k: Tensor, v: Tensor, q_idx: Optional[Tensor], k_idx: Optional[Tensor],
             scale: Optional[float]) -> Tuple[Tensor, Tensor, Tensor, Tensor, float]:
    """Checks shapes; returns k, v repeated to q's heads, the query/key indices and the logit scale."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor) or t.ndim != 4:
            got = type(t).__name__ if not isinstance(t, Tensor) else tuple(t.shape)
            raise ValueError(f"{owner}: {name} must be a 4-D tensor [b, heads, n, d], got {got}")
    b, h, nq, d = q.shape
    if k.shape[0] != b or v.shape[0] != b or k.shape[1] != v.shape[1] or k.shape[2] != v.shape[2]:
        raise ValueError(f"{owner}: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not match "
                         f"(k and v need q's batch and the same heads and length)")
    if k.shape[3] != d:
        raise ValueError(f"{owner}: q and k head dims differ ({d} and {k.shape[3]})")
    h_kv, nk = k.shape[1], k.shape[2]
    if h % h_kv:
        raise ValueError(f"{owner}: k/v have {h_kv} heads, which does not divide q's {h}")
    if q_idx is None and nq > nk:
        raise ValueError(f"{owner}: q has {nq} positions but k only {nk}: without q_idx the queries are the last "
                         f"nq of the keys")
    k_idx = _index("k_idx", k_idx, torch.arange(nk, device=q.device), nk)
    q_idx = _index("q_idx", q_idx, k_idx[nk - nq:] if nq <= nk else k_idx, nq)
    if h_kv != h:
        k = k.repeat_interleave(h // h_kv, dim=1)                                # [b, h, nk, d]
        v = v.repeat_interleave(h // h_kv, dim=1)                                # [b, h, nk, dv]
    if scale is None:
        scale = 1.0 / math.sqrt(d)
    elif isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise ConfigError(f"{owner}: scale must be a finite number > 0 or None, got {scale!r}")
    return k, v, q_idx, k_idx, float(scale)


# -- shared pieces ---------------------------------------------------------------------------------------------------

def _rot(x: Tensor, positions: Tensor, cos_sin: CosSin, layout: str) -> Tensor:
    """x ``[b, h, n, d]`` rotated at ``positions`` ``[n]`` (or ``[1]``, broadcast): float32 angles, x's dtype."""
    cos, sin = cos_sin(positions.to(torch.float32))                              # [n, r/2] each
    return apply_rotary(x, cos, sin, layout)


def _logits(q: Tensor, k: Tensor, scale: float) -> Tensor:
    """``scale * q k^T`` ``[b, h, nq, nk]`` in float32 (float64 for float64 input)."""
    s = torch.matmul(q, k.transpose(-1, -2))                                     # [b, h, nq, nk]
    return s.to(torch.promote_types(s.dtype, torch.float32)) * scale


def _attend(logits: Tensor, allowed: Tensor, v: Tensor) -> Tensor:
    """Masked softmax over the last dim (float32 or wider) and the weighted sum of v, in v's dtype."""
    p = logits.masked_fill(~allowed, float("-inf")).softmax(dim=-1)             # [b, h, nq, nk]
    return torch.matmul(p.to(v.dtype), v)                                        # [b, h, nq, dv]


def _empty(q: Tensor, v: Tensor) -> Tensor:
    return q.new_zeros(*q.shape[:-1], v.shape[-1]).to(v.dtype)


# -- SelfExtend ------------------------------------------------------------------------------------------------------

def self_extend_attention(q: Tensor, k: Tensor, v: Tensor, rope, group: int, window: int,
                          q_idx: Optional[Tensor] = None, k_idx: Optional[Tensor] = None,
                          scale: Optional[float] = None, layout: str = "half") -> Tensor:
    """SelfExtend: Jin et al., "LLM Maybe LongLM: Self-Extend LLM Context Window Without Tuning", ICML 2024,
    arXiv 2401.01325; official code datamllab/LongLM, ``self_extend_patch/Llama.py::self_extend_forward``
    (``group_size_1`` = ``group`` G, ``group_size_2`` = ``window`` W).

    Two logit matrices, merged per (query i, key j), causal::

        neighbour  <R(i) q_i, R(j) k_j>                          used when i - j <  W   (W keys incl. the query)
        grouped    <R(i // G + W - W / G) q_i, R(j // G) k_j>    used when i - j >= W

    ``W - W / G`` is true division (a float position) and is added only when the largest query index is >= W
    (otherwise every visible key is a neighbour anyway).  The relative position each visible key is scored at,
    G = 2, W = 4, 8 tokens (rows i, columns j; ``.`` masked)::

        0 . . . . . . .
        1 0 . . . . . .
        2 1 0 . . . . .
        3 2 1 0 . . . .
        4 3 2 1 0 . . .        i = 4, j = 0: 4 // 2 + 4 - 2 - 0 // 2 = 4
        4 4 3 2 1 0 . .
        5 5 4 3 2 1 0 .
        5 5 4 4 3 2 1 0

    ``group=1`` is plain causal RoPE attention, as is any ``window`` larger than every ``i - j``.

    Confirmed in the official code: the query/key group positions and the float ``W - W / G`` shift with its
    ``max(query position) >= W`` condition; the neighbour mask (``tril`` minus the ``tril`` shifted by W, i.e.
    neighbour iff ``i - j < W``; the decode row keeps the last W keys); the causal mask on both branches; softmax
    upcast to float32; no requirement that W be a multiple of G.  Not followed: its flash-attention decode path uses
    ``W // G`` (integer) instead of ``W / G``; its optional log-length query scaling (``scale_base``) is left to
    `zoo.nn.temperature.LogLengthScale`.

    Args:
        q: ``[b, h, nq, d]``; k, v: ``[b, h_kv, nk, d]`` / ``[b, h_kv, nk, dv]``, all before rotation.
        rope: RoPE module or ``cos_sin(positions)`` function (then ``layout`` says its pair layout).
        group: G >= 1.  window: W >= 1.
        q_idx, k_idx: absolute indices ``[nq]`` / ``[nk]``; default: keys ``0..nk-1``, queries the last ``nq``.
        scale: logit scale, default ``1 / sqrt(d)``.

    Returns:
        ``[b, h, nq, dv]`` in v's dtype (autocast's dtype under autocast).
    """
    owner = "self_extend_attention"
    group = _int_at_least(owner, "group", group, 1)
    window = _int_at_least(owner, "window", window, 1)
    cos_sin, layout = _rotary(owner, rope, layout)
    k, v, qi, kj, scale = _prepare(owner, q, k, v, q_idx, k_idx, scale)
    if qi.numel() == 0:
        return _empty(q, v)
    neighbour = _logits(_rot(q, qi, cos_sin, layout), _rot(k, kj, cos_sin, layout), scale)
    # the shift as a tensor: no host sync on max(q_idx)
    shift = torch.where(qi.max() >= window, float(window), 0.0).to(torch.float32)
    q_group = torch.div(qi, group, rounding_mode="floor").to(torch.float32) + shift - shift / group   # [nq]
    k_group = torch.div(kj, group, rounding_mode="floor")                                             # [nk]
    grouped = _logits(_rot(q, q_group, cos_sin, layout), _rot(k, k_group, cos_sin, layout), scale)
    dist = qi[:, None] - kj[None, :]                                             # [nq, nk]
    logits = torch.where(dist < window, neighbour, grouped)                      # [b, h, nq, nk]
    return _attend(logits, dist >= 0, v)


# -- STRING ----------------------------------------------------------------------------------------------------------

def string_attention(q: Tensor, k: Tensor, v: Tensor, rope, shift: int, window: int = 128,
                     q_idx: Optional[Tensor] = None, k_idx: Optional[Tensor] = None,
                     scale: Optional[float] = None, attention_factor: float = STRING_ATTENTION_FACTOR,
                     count_boundary_twice: bool = False, layout: str = "half") -> Tensor:
    """STRING, ShifTed Rotary position embeddING: An et al., "Why Does the Effective Context Length of LLMs Fall
    Short?", ICLR 2025, arXiv 2410.18745; official code HKUNLP/STRING, ``string_for_llama.py`` (``shifted_offset``
    = ``shift`` S, ``small_local_value`` = ``window`` W).

    Distances at or beyond S are replaced by well-trained smaller ones, and a local window W keeps the nearest of
    them distinct (the paper's shifted relative-position matrix)::

        exact    <R(i) q_i, R(j) k_j>               used when i - j <  S       (relative position i - j)
        shifted  <R(i - S + W) q_i, R(j) k_j>       used when i - j >= S       (relative position i - j - S + W)

    The relative position of each visible key, S = 4, W = 1, 8 tokens::

        0 . . . . . . .
        1 0 . . . . . .
        2 1 0 . . . . .
        3 2 1 0 . . . .
        1 3 2 1 0 . . .        i - j = 4 >= S: 4 - 4 + 1 = 1
        2 1 3 2 1 0 . .
        3 2 1 3 2 1 0 .
        4 3 2 1 3 2 1 0

    The official code computes it as two flash-attention calls merged by their log-sum-exp (the same softmax as
    here): a sliding window over the diagonal with exact positions, and causal attention of the last ``n - S``
    queries, rotated at ``i - S + W``, over the first ``n - S`` keys.  It also multiplies RoPE's cos and sin by
    ``0.1 ln 2 + 1`` (`STRING_ATTENTION_FACTOR`), i.e. every logit by its square: ``attention_factor`` here (1.0 turns
    it off).  Its scripts give S = ``int(0.33 * L)`` (the paper: L / 3) for a training length L, W = 128, and apply
    no patch at all for S = 0: ``shift=0`` here is plain causal RoPE attention, without the factor.

    Confirmed in the official code: the shifted query position ``i - S + W`` against exact key positions; the
    decode path's split (the last S cached keys exact, the rest shifted: exact iff ``i - j < S``); the
    log-sum-exp merge in float32; the attention factor.  One difference kept optional: in the official *prefill*
    path the diagonal call's window ``[S, 0]`` is inclusive (flash-attention attends ``i - S .. i``) while the
    shifted call covers ``j <= i - S``, so the key at distance exactly S enters both softmaxes, once at relative
    position S and once at W; ``count_boundary_twice=True`` reproduces that, the default follows the paper's matrix
    and the official decode path (each key once).

    Args:
        shift: S >= 0.  window: W with ``0 <= W <= S`` (a larger W would move far keys further away).
        attention_factor: multiplies cos and sin (logits by its square); > 0.
        count_boundary_twice: the official prefill's double count of the key at ``i - j == S`` (see above).
        Others as in `self_extend_attention`.

    Returns:
        ``[b, h, nq, dv]`` in v's dtype.
    """
    owner = "string_attention"
    shift = _int_at_least(owner, "shift", shift, 0)
    window = _int_at_least(owner, "window", window, 0)
    if shift and window > shift:
        raise ConfigError(f"{owner}: window must be <= shift (far distances become i - j - shift + window), got "
                          f"window={window}, shift={shift}")
    if isinstance(attention_factor, bool) or not isinstance(attention_factor, (int, float)) \
            or not math.isfinite(attention_factor) or attention_factor <= 0:
        raise ConfigError(f"{owner}: attention_factor must be a finite number > 0, got {attention_factor!r}")
    if not isinstance(count_boundary_twice, bool):
        raise ConfigError(f"{owner}: count_boundary_twice must be a bool, got {count_boundary_twice!r}")
    cos_sin, layout = _rotary(owner, rope, layout)
    k, v, qi, kj, scale = _prepare(owner, q, k, v, q_idx, k_idx, scale)
    if qi.numel() == 0:
        return _empty(q, v)
    k_rot = _rot(k, kj, cos_sin, layout)
    exact = _logits(_rot(q, qi, cos_sin, layout), k_rot, scale)
    dist = qi[:, None] - kj[None, :]                                             # [nq, nk]
    if shift == 0:
        return _attend(exact, dist >= 0, v)
    exact = exact * attention_factor ** 2
    shifted = _logits(_rot(q, qi - shift + window, cos_sin, layout), k_rot, scale) * attention_factor ** 2
    if not count_boundary_twice:
        return _attend(torch.where(dist < shift, exact, shifted), dist >= 0, v)
    # both official branches side by side: [exact | shifted] over 2 nk keys, one softmax (= the lse merge)
    logits = torch.cat([exact, shifted], dim=-1)                                 # [b, h, nq, 2 nk]
    allowed = torch.cat([(dist >= 0) & (dist <= shift), dist >= shift], dim=-1)  # [nq, 2 nk]
    return _attend(logits, allowed, torch.cat([v, v], dim=-2))


# -- LM-Infinite -----------------------------------------------------------------------------------------------------

def lm_infinite_attention(q: Tensor, k: Tensor, v: Tensor, rope, window: int, n_global: int,
                          q_idx: Optional[Tensor] = None, k_idx: Optional[Tensor] = None,
                          scale: Optional[float] = None, limit_distance: Optional[int] = None,
                          layout: str = "half") -> Tensor:
    """LM-Infinite, Lambda-shaped attention: Han et al., "LM-Infinite: Zero-Shot Extreme Length Generalization for
    Large Language Models", NAACL 2024, arXiv 2308.16137; official code Glaciohound/LM-Infinite,
    ``models/llama.py`` with ``use_lambda_mask=True`` and ``models/lambda_attention.py`` (``local_branch`` =
    ``window`` L, ``global_branch`` = ``n_global``, ``limit_distance`` defaults to L as ``convert_llama_model``
    sets it).

    A key is visible if it is local (``0 <= i - j < L``: exact positions) or a starting token (``j < n_global``,
    causal).  A starting token beyond the window is scored at a capped distance with its key unrotated::

        local    <R(i) q_i, R(j) k_j>     0 <= i - j < L
        global   <R(d) q_i, k_j>          j < n_global and i - j >= L,   d = min(limit_distance, nk - 1)

    The relative position of each visible key, L = 3, n_global = 1, 8 tokens (``.`` masked)::

        0 . . . . . . .
        1 0 . . . . . .
        2 1 0 . . . . .
        3 2 1 0 . . . .        i = 3, j = 0: a starting token beyond the window, at d = min(3, 7) = 3
        3 . 2 1 0 . . .
        3 . . 2 1 0 . .
        3 . . . 2 1 0 .
        3 . . . . 2 1 0

    Confirmed in the official code: the stationary query ``q cos(d) + rotate_half(q) sin(d)`` against unrotated
    keys, ``d = min(limit_distance, kv_seq_len - 1)`` with ``kv_seq_len`` the number of keys (``nk`` here); the
    global columns masked where ``j > i - L`` (there a starting token keeps its rotated, true-distance logit); the
    local band ``0 <= i - j < L``; the ``1 / sqrt(d)`` scale on both.  Differences: the official Lambda path takes
    the softmax in the activations' dtype (here float32), and its blockwise form handles only ``nq == 1``,
    ``nq == nk`` or ``nk = nq + L + n_global``; the dense form here takes any queries.  The non-Lambda path
    (``use_lambda_mask=False``) is a different method and is not implemented.

    Args:
        window: L >= 1.  n_global: starting tokens kept, >= 0 (0 is a plain sliding window).
        limit_distance: the distance cap, >= 0; default L.
        Others as in `self_extend_attention`.

    Returns:
        ``[b, h, nq, dv]`` in v's dtype.
    """
    owner = "lm_infinite_attention"
    window = _int_at_least(owner, "window", window, 1)
    n_global = _int_at_least(owner, "n_global", n_global, 0)
    limit = window if limit_distance is None else _int_at_least(owner, "limit_distance", limit_distance, 0)
    cos_sin, layout = _rotary(owner, rope, layout)
    k, v, qi, kj, scale = _prepare(owner, q, k, v, q_idx, k_idx, scale)
    if qi.numel() == 0:
        return _empty(q, v)
    local = _logits(_rot(q, qi, cos_sin, layout), _rot(k, kj, cos_sin, layout), scale)
    dist = qi[:, None] - kj[None, :]                                             # [nq, nk]
    in_window = (dist >= 0) & (dist < window)
    far_global = (kj[None, :] < n_global) & (dist >= window)
    if not n_global:
        return _attend(local, in_window, v)
    d = torch.full((1,), min(limit, k.shape[-2] - 1), device=q.device)          # one position for every query
    stationary = _logits(_rot(q, d, cos_sin, layout), k, scale)                  # k unrotated
    logits = torch.where(in_window, local, stationary)
    return _attend(logits, in_window | far_global, v)


# -- Ms-PoE ----------------------------------------------------------------------------------------------------------

def ms_poe_ratios(num_heads: int, min_ratio: float = 1.2, max_ratio: float = 1.8, device=None) -> Tensor:
    """Ms-PoE's ratio slots (Zhang et al., "Found in the Middle: How Language Models Use Long Contexts Better via
    Plug-and-Play Positional Encoding", arXiv 2403.04797; official code VITA-Group/Ms-PoE): ``r_s = min + (max -
    min) * s / H`` for s = 0..H-1, float32 ``[H]`` (``max_ratio`` itself is never reached, as in the official code)."""
    owner = "ms_poe_ratios"
    num_heads = _int_at_least(owner, "num_heads", num_heads, 1)
    for name, r in (("min_ratio", min_ratio), ("max_ratio", max_ratio)):
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r) or r <= 0:
            raise ConfigError(f"{owner}: {name} must be a finite number > 0, got {r!r}")
    if max_ratio < min_ratio:
        raise ConfigError(f"{owner}: max_ratio ({max_ratio}) must be >= min_ratio ({min_ratio})")
    s = torch.arange(num_heads, dtype=torch.float32, device=device)
    return min_ratio + (max_ratio - min_ratio) * s / num_heads


def ms_poe_head_order(q: Tensor, k: Tensor, scale: Optional[float] = None) -> Tensor:
    """Ms-PoE's head order from the *un-rotated* q, k ``[b, h, n, d]`` (a full causal forward; k repeated to q's heads
    when grouped): per head, the causal softmax row of the last query, ``P`` (float32); outlier score
    ``o_h = -mean_j [P_j > 3 mean_j P_j]``; returns ``argsort(o)`` ``[h]`` (int64).  Head h then uses
    ``ratios[order[h]]``: the official code gathers the ratios by the argsort itself, not by rank.

    Confirmed in the official code (``utils/modify_arch/llama.py``, ``_calculate_outlier``): the pre-RoPE q, k; the
    factor 3 (an earlier version used 4); the last row; the argsort used as a gather index; computed once per layer
    on the first forward, then frozen (caching is the caller's); ``head_type="normal"`` replaces the order by
    ``H - 1 - h``.  The official code handles batch size 1; here the score is averaged over the batch."""
    owner = "ms_poe_head_order"
    for name, t in (("q", q), ("k", k)):
        if not isinstance(t, Tensor) or t.ndim != 4:
            got = type(t).__name__ if not isinstance(t, Tensor) else tuple(t.shape)
            raise ValueError(f"{owner}: {name} must be a 4-D tensor [b, h, n, d], got {got}")
    if q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:] or q.shape[1] % k.shape[1]:
        raise ValueError(f"{owner}: q and k must be [b, h, n, d] and [b, h_kv, n, d] with h_kv dividing h, got "
                         f"{tuple(q.shape)} and {tuple(k.shape)}")
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)                    # [b, h, n, d]
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    # the last query sees every key: its causal row is the full row
    last = _logits(q[:, :, -1:], k, float(scale)).softmax(dim=-1)[:, :, 0]      # [b, h, n]
    outlier = (last > 3 * last.mean(dim=-1, keepdim=True)).to(last.dtype)       # [b, h, n]
    score = -outlier.mean(dim=-1).mean(dim=0)                                    # [h]
    return torch.argsort(score)


def ms_poe_rotate(q: Tensor, k: Tensor, rope, head_ratios: Tensor, q_idx: Optional[Tensor] = None,
                  k_idx: Optional[Tensor] = None, layout: str = "half") -> Tuple[Tensor, Tensor]:
    """Rotate head h of q ``[b, h, nq, d]`` at positions ``t / head_ratios[h]`` (float positions, float32 angles), and
    k ``[b, h_kv, nk, d]`` likewise; with grouped keys, key head g takes the ratio of query head ``g * h / h_kv`` (the
    official ``cos[::num_key_value_groups]``).  ``head_ratios`` ``[h]``, e.g. ``ms_poe_ratios(h)[order]`` with
    ``order = ms_poe_head_order(q, k)``.  Indices as in `self_extend_attention`; the rotated q, k go to ordinary
    causal attention.  Confirmed in the official code: ratios indexed by the head order, positions ``t / r``."""
    owner = "ms_poe_rotate"
    cos_sin, layout = _rotary(owner, rope, layout)
    if not isinstance(q, Tensor) or not isinstance(k, Tensor) or q.ndim != 4 or k.ndim != 4 \
            or q.shape[0] != k.shape[0] or q.shape[1] % k.shape[1] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"{owner}: q, k must be [b, h, nq, d] and [b, h_kv, nk, d] with h_kv dividing h, got "
                         f"{getattr(q, 'shape', type(q).__name__)} and {getattr(k, 'shape', type(k).__name__)}")
    h, nq, nk = q.shape[1], q.shape[2], k.shape[2]
    if not isinstance(head_ratios, Tensor) or head_ratios.shape != (h,) or not head_ratios.dtype.is_floating_point:
        got = type(head_ratios).__name__ if not isinstance(head_ratios, Tensor) else \
            f"{head_ratios.dtype} {tuple(head_ratios.shape)}"
        raise ValueError(f"{owner}: head_ratios must be a float tensor [{h}] of ratios > 0, got {got}")
    if q_idx is None and nq > nk:
        raise ValueError(f"{owner}: q has {nq} positions but k only {nk}")
    kj = _index("k_idx", k_idx, torch.arange(nk, device=k.device), nk)
    qi = _index("q_idx", q_idx, kj[nk - nq:] if nq <= nk else kj, nq)
    r = head_ratios.to(device=k.device, dtype=torch.float32)[:, None]           # [h, 1]

    def rot(x: Tensor, idx: Tensor, ratio: Tensor) -> Tensor:
        cos, sin = cos_sin(idx.to(torch.float32)[None, :] / ratio)               # [heads, n, r/2]
        return apply_rotary(x, cos, sin, layout)

    return rot(q, qi, r), rot(k, kj, r[::h // k.shape[1]])
