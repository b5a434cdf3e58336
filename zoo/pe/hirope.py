"""HiRoPE: Zhang, Li, Zhang & Jin, "HiRoPE: Length Extrapolation for Code Models Using Hierarchical Position",
ACL 2024 (arXiv 2403.19115).  No official code exists; this follows the paper text that could be read (abstract,
Figure 2 and its caption, section summaries; REFERENCES.md section 5) and marks what is interpretation.

Certain (abstract, Figure 2 caption):

* training-free: a RoPE model is re-used as is, only the positions fed to its rotations change;
* each token gets a *hierarchical* position from the syntax tree (tree-sitter), two levels in the paper:
  function/class-level and token-level;
* the RoPE dimensions are *split* between the levels ("apply it across different dimensions");
* a *window* mechanism keeps the original positions for nearby tokens, "to ensure stable performance for short
  texts, aligning with the original positional encoding" (Figure 2 uses ``L_window = 3``).

Interpretation (not verifiable here; the choices are constructor arguments):

* which dims get which level: the high-frequency pairs (low channel index) carry the token-level position, the
  low-frequency pairs the higher level, so the pairs that would leave the trained angle range on long inputs
  (low frequencies) see the small higher-level index.  For ``k > 2`` levels the blocks continue the same way: the
  finer the level, the higher its frequencies.  ``split`` is the finest level's share of the pairs (default 0.5).
* token-level position: ``within_parent=False`` (default) uses each level's running index as given by
  `Positions.levels` (the token level is then the plain token index, as in REFERENCES' sketch);
  ``within_parent=True`` restarts each level's index at every new unit of the next coarser level used (token index
  within its function), which is the reading behind the paper's claim of lengths *exponential* in the number of
  levels (every level's index stays below the training length).
* window rule: pair-wise.  If the tokens ``i, j`` are less than ``window`` tokens apart (``|t_i - t_j| < window``,
  ``t`` = last column of `Positions.levels`), their logit is the plain-RoPE logit on token positions; otherwise the
  hierarchical one.  ``window=0`` turns the window off.

Cost of the window.  The rule depends on the *pair* ``(i, j)``, so it is not a rotation of q and k separately.
`HiRoPE.rotate` applies the hierarchical rotation; `HiRoPE.bias` (only when ``window > 0``) adds, inside the window,
``scale * (s_rope - s_hier)`` so that the summed logit equals the plain-RoPE logit there.  ``s_rope`` is obtained
from the *already rotated* q, k by a second rotation with angles ``theta * (t - p_level)`` (rotations of a pair
commute), so `bias` must receive what `rotate` returned, as `zoo.nn.Attention` passes them.  This costs two
extra float32 ``q k^T`` products and a dense ``[b, h, nq, nk]`` float mask per layer, and SDPA then cannot use
its flash kernel: quadratic memory, roughly 3x the logit work.  With ``window=0`` HiRoPE is a pure rotation.
Attention kinds that ignore `bias` (linear attention) get the hierarchical rotation without the window.

Pair layout: ``"half"`` (HF Llama / the code LLMs HiRoPE is applied to) or ``"interleaved"``; see `zoo.pe.rope`.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ..positions import Positions
from .base import PositionalEncoding, no_autocast
from .registry import register_pe
from .rope import apply_rotary, check_rotary_qk, rope_inv_freq

__all__ = ["hierarchical_positions", "hirope_split", "hirope_angles", "HiRoPE"]


def _resolve_columns(levels: Sequence[int], num_columns: int) -> Tuple[int, ...]:
    """Normalise (possibly negative) column indices against ``num_columns``; they must go coarse -> fine."""
    cols = []
    for c in levels:
        if not -num_columns <= c < num_columns:
            need = max(c + 1 if c >= 0 else -c for c in levels)
            raise ValueError(f"levels={tuple(levels)} needs Positions.levels with at least {need} columns "
                             f"(coarsest..finest, last = token index), got {num_columns}")
        cols.append(c % num_columns)
    if any(b <= a for a, b in zip(cols, cols[1:])):
        raise ValueError(f"levels={tuple(levels)} must name distinct columns ordered from coarsest to finest "
                         f"(resolved to {tuple(cols)} of {num_columns})")
    return tuple(cols)


def hierarchical_positions(levels: Tensor, columns: Sequence[int], within_parent: bool = False) -> Tensor:
    """The per-level positions HiRoPE rotates by.

    Args:
        levels: ``[..., n, L]`` int running indices, coarsest to finest (see `Positions.levels`).
        columns: the ``k`` columns used, coarse -> fine (negative indices allowed).
        within_parent: restart level ``c_i``'s index at every new unit of level ``c_{i-1}`` (the first level used
            keeps its running index).

    Returns:
        ``[..., n, k]`` int64.
    """
    cols = _resolve_columns(columns, levels.shape[-1])
    lv = levels.long()
    pos = lv[..., list(cols)]                                                    # [..., n, k]
    if not within_parent:
        return pos
    n = lv.shape[-2]
    idx = torch.arange(n, device=lv.device)
    out = [pos[..., 0]]
    for i in range(1, len(cols)):
        parent = lv[..., cols[i - 1]]                                            # [..., n]
        new = torch.ones_like(parent, dtype=torch.bool)
        new[..., 1:] = parent[..., 1:] != parent[..., :-1]                       # a parent unit starts here
        start = torch.where(new, idx, torch.zeros_like(idx)).cummax(dim=-1).values  # [..., n] first token of unit
        col = pos[..., i]
        out.append(col - col.gather(-1, start))
    return torch.stack(out, dim=-1)                                              # [..., n, k]


def hirope_split(num_pairs: int, split: Union[float, Sequence[int]], num_levels: int) -> Tuple[int, ...]:
    """Rotary pairs per level, coarse -> fine; the finest level takes the first (highest-frequency) pairs.

    ``split`` is either the finest level's fraction of the pairs (the rest is shared evenly by the coarser levels,
    the coarsest taking any remainder) or ``num_levels`` explicit pair counts (coarse -> fine) summing to
    ``num_pairs``.
    """
    if num_levels < 2:
        raise ValueError(f"HiRoPE needs at least 2 levels, got {num_levels}")
    if isinstance(split, (int, float)) and not isinstance(split, bool):
        if not 0.0 < float(split) < 1.0:
            raise ValueError(f"split must be a fraction in (0, 1) or {num_levels} pair counts, got {split!r}")
        fine = int(round(float(split) * num_pairs))
        rest = num_pairs - fine
        if fine < 1 or rest < num_levels - 1:
            raise ValueError(f"split={split} leaves {fine} token-level and {rest} higher-level pairs of {num_pairs}; "
                             f"every level needs at least one pair")
        share, extra = divmod(rest, num_levels - 1)
        coarse = [share + (1 if i < extra else 0) for i in range(num_levels - 1)]
        return tuple(coarse) + (fine,)
    try:
        counts = tuple(int(c) for c in split)
    except (TypeError, ValueError):
        raise ValueError(f"split must be a fraction in (0, 1) or {num_levels} pair counts, got {split!r}") from None
    if len(counts) != num_levels or sum(counts) != num_pairs or min(counts) < 1:
        raise ValueError(f"split as pair counts must give {num_levels} positive ints (coarse -> fine) summing to "
                         f"head_dim/2 = {num_pairs}, got {counts}")
    return counts


def _pair_level(counts: Sequence[int], device=None) -> Tensor:
    """``[r/2]`` level index (0 = coarsest) of every pair: finest level first, coarsest last."""
    k = len(counts)
    return torch.cat([torch.full((counts[i],), i, dtype=torch.long, device=device) for i in reversed(range(k))])


def hirope_angles(positions: Tensor, inv_freq: Tensor, counts: Sequence[int]) -> Tensor:
    """Rotation angles ``p_{level(t)} * theta_t``, float32 (autocast disabled locally).

    Args:
        positions: ``[..., n, k]`` per-level positions (coarse -> fine), e.g. `hierarchical_positions`.
        inv_freq: ``[r/2]`` frequencies (`rope_inv_freq`).
        counts: pairs per level, coarse -> fine (`hirope_split`).

    Returns:
        ``[..., n, r/2]`` float32: pair ``t < counts[-1]`` uses the finest level, the last ``counts[0]`` pairs the
        coarsest.
    """
    if positions.shape[-1] != len(counts) or sum(counts) != inv_freq.shape[-1]:
        raise ValueError(f"positions [..., n, {positions.shape[-1]}] / counts {tuple(counts)} / inv_freq "
                         f"[{inv_freq.shape[-1]}] do not agree")
    with no_autocast(positions.device):
        p = positions.to(torch.float32)[..., _pair_level(counts, positions.device)]   # [..., n, r/2]
        return p * inv_freq.to(device=positions.device, dtype=torch.float32)


@register_pe("hirope", positions="1d", paper="Zhang et al., HiRoPE: Length Extrapolation for Code Models Using "
             "Hierarchical Position, ACL 2024, arXiv:2403.19115", causal_ok=True)
class HiRoPE(PositionalEncoding):
    """Hierarchical RoPE (Zhang et al., ACL 2024) on the ``rotate`` hook, plus the window rule on ``bias``.

    Args:
        head_dim: ``d`` of q/k (all channels are rotated).
        base: RoPE frequency base of the model it is applied to.
        levels: columns of `Positions.levels` used, coarse -> fine (negative = from the end).  Default ``(-2, -1)``:
            the unit just above tokens and the token index, any ``L >= 2``.  With the code pipeline's
            (file, class, function, statement, token) columns the paper's function-level reading is ``(2, 4)``.
        split: finest level's fraction of the ``d/2`` pairs (the high frequencies), or pair counts per level
            (coarse -> fine); see `hirope_split`.
        window: ``L_window``: token pairs less than ``window`` apart keep plain RoPE on token positions (the last
            column of `Positions.levels`); 0 = no window (pure rotation).
        layout: ``"half"`` or ``"interleaved"`` rotary pairs.
        within_parent: per-level positions restart inside each unit of the coarser level used (see the module
            docstring); default False uses the running indices as given.

    Reads ``pos.levels`` ``[b, nk, L]`` or ``[nk, L]`` (ints); with a KV cache (``nk > nq``) the queries are the
    last ``nq`` keys.  Angles are float32 under any autocast.
    """

    reads = ("levels",)                                                          # the Positions field it reads

    def __init__(self, head_dim: int, base: float = 10000.0, levels: Sequence[int] = (-2, -1),
                 split: Union[float, Sequence[int]] = 0.5, window: int = 0, layout: str = "half",
                 within_parent: bool = False):
        super().__init__()
        if not isinstance(head_dim, int) or head_dim <= 0 or head_dim % 2:
            raise ValueError(f"head_dim must be a positive even int, got {head_dim!r}")
        if base <= 0:
            raise ValueError(f"base must be positive, got {base}")
        if layout not in ("half", "interleaved"):
            raise ValueError(f"layout must be 'half' or 'interleaved', got {layout!r}")
        try:
            lv = tuple(levels)
        except TypeError:
            raise ValueError(f"levels must be a sequence of column indices, got {levels!r}") from None
        if len(lv) < 2 or not all(isinstance(c, int) and not isinstance(c, bool) for c in lv):
            raise ValueError(f"levels must be at least 2 int column indices (coarse -> fine), got {levels!r}")
        if not isinstance(window, int) or isinstance(window, bool) or window < 0:
            raise ValueError(f"window must be a non-negative int (0 = no window), got {window!r}")
        self.head_dim, self.base, self.layout = head_dim, float(base), layout
        self.levels, self.window, self.within_parent = lv, window, bool(within_parent)
        self.counts = hirope_split(head_dim // 2, split, len(lv))
        # plain attributes, not buffers: module.half() must not cast the frequencies
        self._inv_freq: Dict[torch.device, Tensor] = {}

    def extra_repr(self) -> str:
        return (f"head_dim={self.head_dim}, base={self.base:g}, levels={self.levels}, pairs={self.counts}, "
                f"window={self.window}, layout={self.layout!r}, within_parent={self.within_parent}")

    def inv_freq(self, device) -> Tensor:
        device = torch.device(device)
        f = self._inv_freq.get(device)
        if f is None:
            f = self._inv_freq[device] = rope_inv_freq(self.head_dim, self.base, device)
        return f

    # ---- positions ----------------------------------------------------------------------------------------
    def _checked_levels(self, q: Tensor, k: Tensor, pos: Optional[Positions]) -> Tensor:
        nq, nk = check_rotary_qk(q, k, self.head_dim, "HiRoPE")
        if pos is None or pos.levels is None:
            raise ValueError("HiRoPE needs Positions.levels ([b, n, L] hierarchical ids, coarsest to finest, last "
                             "column = token index), which the input does not provide")
        lv = pos.levels
        if not isinstance(lv, Tensor) or lv.ndim not in (2, 3):
            raise ValueError(f"pos.levels must be [b, n, L] or [n, L], got "
                             f"{tuple(lv.shape) if isinstance(lv, Tensor) else type(lv).__name__}")
        if lv.is_floating_point() or lv.is_complex() or lv.dtype == torch.bool:
            raise ValueError(f"pos.levels must hold integer ids, got {lv.dtype}")
        if lv.shape[-1] < 2:
            raise ValueError(f"pos.levels must have at least 2 columns (a unit level and the token index), "
                             f"got {lv.shape[-1]}")
        _resolve_columns(self.levels, lv.shape[-1])
        if lv.shape[-2] != nk:
            raise ValueError(f"pos.levels has {lv.shape[-2]} positions but k has {nk} (levels describe the keys; "
                             f"queries take the last {nq})")
        return lv.to(k.device)

    def cos_sin(self, levels: Tensor) -> Tuple[Tensor, Tensor]:
        """float32 cos, sin of the hierarchical angles for ``levels`` ``[..., n, L]`` -> ``[..., n, d/2]`` each."""
        p = hierarchical_positions(levels, self.levels, self.within_parent)       # [..., n, k]
        ang = hirope_angles(p, self.inv_freq(levels.device), self.counts)        # [..., n, d/2]
        return ang.cos(), ang.sin()

    # ---- hooks --------------------------------------------------------------------------------------------
    def rotate(self, q: Tensor, k: Tensor, pos: Optional[Positions]) -> Tuple[Tensor, Tensor]:
        # q [b, h, nq, d], k [b, h, nk, d]
        lv = self._checked_levels(q, k, pos)
        nq, nk = q.shape[-2], k.shape[-2]
        cos, sin = self.cos_sin(lv)                                              # [nk, d/2] or [b, nk, d/2]
        if cos.ndim == 3:
            cos, sin = cos[:, None], sin[:, None]                                # [b, 1, nk, d/2]
        k = apply_rotary(k, cos, sin, self.layout)
        q = apply_rotary(q, cos[..., nk - nq:, :], sin[..., nk - nq:, :], self.layout)
        return q, k

    def bias(self, q: Tensor, k: Tensor, pos: Optional[Positions], scale: float) -> Optional[Tensor]:
        """Window rule: ``scale * (s_rope - s_hier)`` where ``|t_i - t_j| < window``, else 0; ``[b|1, h, nq, nk]``.

        ``q``, ``k`` must be the outputs of `rotate` (hierarchically rotated).  None when ``window == 0``.
        """
        if self.window == 0:
            return None
        lv = self._checked_levels(q, k, pos)
        nq, nk = q.shape[-2], k.shape[-2]
        p = hierarchical_positions(lv, self.levels, self.within_parent)          # [..., nk, k]
        tok = lv[..., -1].long()                                                 # [..., nk] token index
        # extra rotation taking the hierarchical angle p_level * theta to the plain one t * theta
        delta = tok[..., None] - p                                               # [..., nk, k]
        ang = hirope_angles(delta, self.inv_freq(lv.device), self.counts)        # [..., nk, d/2]
        cos, sin = ang.cos(), ang.sin()
        if cos.ndim == 3:
            cos, sin = cos[:, None], sin[:, None]                                # [b, 1, nk, d/2]
        qf, kf = q.float(), k.float()
        q_rope = apply_rotary(qf, cos[..., nk - nq:, :], sin[..., nk - nq:, :], self.layout)  # [b, h, nq, d]
        k_rope = apply_rotary(kf, cos, sin, self.layout)                         # [b, h, nk, d]
        diff = q_rope @ k_rope.transpose(-2, -1) - qf @ kf.transpose(-2, -1)     # [b, h, nq, nk] float32
        dist = tok[..., nk - nq:, None] - tok[..., None, :]                      # [..., nq, nk]
        inside = (dist.abs() < self.window)
        inside = inside[:, None] if inside.ndim == 3 else inside                 # [b|., 1, nq, nk]
        return torch.where(inside, diff * scale, torch.zeros((), dtype=diff.dtype, device=diff.device))
