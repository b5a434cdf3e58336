"""Decoder language models for code, one per positional encoding, with a KV cache and ``generate``.

    input_ids [b, n] --tok_emb--> [b, n, c] (+ BiPE intra-line table) --Blocks(causal, pe)--> norm --> head (tied)
        --> logits [b, n, vocab]

Positions follow the code data pipeline (``domains.code.data``): ``ids [b, n]`` token index, ``levels [b, n, 5]``
(file, class, function, statement, token), ``segments [b, n]`` line index, ``mask [b, n]`` optional, every field
re-based to 0 at the window start.  What each encoding reads::

    nope    nothing                          (Kazemnejad et al., NeurIPS 2023)
    rope    RoPE base 10000 on ids           (Su et al., RoFormer)
    alibi   causal ALiBi on ids              (Press et al., ICLR 2022)
    hirope  HiRoPE on levels (2, -1)         (Zhang et al., ACL 2024): function index + token index, split 0.5
    bipe    intra-line learned table + RoPE on segments (He et al., ICML 2024): intra = token index minus the index
            of its line's first token (`line_intra`, clipped at max_intra - 1), inter = the line index

Choices (documented here because they are ours, not the papers'):

* HiRoPE ``window=0``: the paper's window keeps plain RoPE for nearby tokens so that a *pretrained* RoPE model is
  unchanged on short texts; these models are trained with HiRoPE from the start, and a window would add a dense
  ``[b, h, n, n]`` bias per layer (no flash kernel).  Pass ``pe_kwargs=dict(window=...)`` to turn it on.
* Length: every model has ``max_seq_len`` (default 1024, the BiPE/HiRoPE training length scale) and raises when the
  keys (cached + new) exceed it, unless ``allow_longer=True``: all encodings here can then run longer for
  extrapolation studies (rope/alibi/hirope/nope are functions of positions; BiPE's intra table clips at
  ``max_intra - 1`` as the official code does, its inter positions are RoPE).
* ``forward(input_ids)`` without ``pos`` builds token indices (and line segments when the model knows its
  ``newline_ids``); it never invents a hierarchy: HiRoPE then raises naming ``Positions.levels`` (use
  ``code_positions(input_ids, flat_levels=True)`` to run it on text without a parse: HiRoPE then equals RoPE).

Generation positions (`extend_positions`, the default ``pos_fn`` of `CodeLM.generate`): a new token's ``ids`` and
token-level column continue (last + 1); the coarser ``levels`` columns repeat the last token's (the new tokens stay
in the same file/class/function/statement: there is no parse of unfinished code); ``segments`` advance by the number
of newlines in the previous token (``newline_ids``: a set of ids counting one newline each, a dict id -> count, or
`newline_counts_from_tokenizer`), which is the data pipeline's rule (a token's line is the line of its first byte);
``mask`` continues with True.
"""
from __future__ import annotations

from typing import Dict, Iterable, Mapping, Optional, Union

import torch
from torch import Tensor

from zoo.nn.transformer import DecoderLM, any_spec, check_positive_ints, preset_encodings, segment_intra, spec_label
from zoo.nn.fit import register_family
from zoo.positions import Positions
from zoo.registry import register_model

__all__ = ["CodeLM", "PE_KINDS", "ENCODINGS", "line_intra", "newline_table", "newline_counts_from_tokenizer",
           "code_positions", "extend_positions"]

PAPERS = {
    "nope": "https://arxiv.org/abs/2305.19466",
    "rope": "https://arxiv.org/abs/2104.09864",
    "alibi": "https://arxiv.org/abs/2108.12409",
    "hirope": "https://arxiv.org/abs/2403.19115",
    "bipe": "https://arxiv.org/abs/2401.16421",
    "bipe_alibi": "https://arxiv.org/abs/2401.16421",
}
#: encoding kind -> the Positions fields the model reads
PE_KINDS: Dict[str, tuple] = {"nope": (), "rope": ("ids",), "alibi": ("ids",), "hirope": ("levels",),
                              "bipe": ("segments",), "bipe_alibi": ("segments",)}
#: encoding kind -> its spec for `zoo.pe.build` (the model's geometry and causal=True are added)
ENCODINGS = {"nope": None, "rope": {"name": "rope", "base": 10000.0}, "alibi": "alibi",
             "hirope": {"name": "hirope", "base": 10000.0, "levels": (2, -1), "split": 0.5, "window": 0},
             "bipe": {"name": "bipe_rope", "base": 10000.0}, "bipe_alibi": "bipe_alibi"}
NewlineIds = Union[None, Tensor, Mapping[int, int], Iterable[int]]
#: index of every token inside its line (BiPE's intra position), clipped at ``max_intra - 1``
line_intra = segment_intra


# ---- positions --------------------------------------------------------------------------------------------------

def newline_table(newline_ids: NewlineIds, vocab_size: int, device=None) -> Optional[Tensor]:
    """Newlines per token id as an int64 ``[vocab_size]`` table (None when ``newline_ids`` is None).

    ``newline_ids``: an iterable of ids (one newline each), a mapping id -> newline count, or a ``[vocab_size]``
    tensor of counts."""
    if newline_ids is None:
        return None
    if isinstance(newline_ids, Tensor):
        if newline_ids.shape != (vocab_size,) or newline_ids.is_floating_point():
            raise ValueError(f"newline_ids as a tensor must be int counts [vocab_size={vocab_size}], got "
                             f"{newline_ids.dtype} {tuple(newline_ids.shape)}")
        return newline_ids.to(device=device, dtype=torch.long)
    pairs = newline_ids.items() if isinstance(newline_ids, Mapping) else ((i, 1) for i in newline_ids)
    table = torch.zeros(vocab_size, dtype=torch.long)
    for i, c in pairs:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < vocab_size:
            raise ValueError(f"newline_ids: token id {i!r} is not an int in 0..{vocab_size - 1}")
        if isinstance(c, bool) or not isinstance(c, int) or c < 0:
            raise ValueError(f"newline_ids: newline count {c!r} of token {i} is not a non-negative int")
        table[i] = c
    return table.to(device)


def newline_counts_from_tokenizer(tokenizer) -> Dict[int, int]:
    """``{token id: number of b"\\n" in its bytes}`` for every id whose bytes hold a newline.

    ``tokenizer`` needs ``vocab_size`` and ``token_bytes(id)`` (``domains.code.tokenizer.CodeTokenizer``)."""
    out = {}
    for i in range(int(tokenizer.vocab_size)):
        c = bytes(tokenizer.token_bytes(i)).count(b"\n")
        if c:
            out[i] = c
    return out


def _table_for(newline_ids: NewlineIds, tokens: Tensor, vocab_size: Optional[int] = None) -> Tensor:
    if isinstance(newline_ids, Tensor):
        return newline_table(newline_ids, newline_ids.shape[0], tokens.device)
    if vocab_size is None:
        ids = list(newline_ids.keys() if isinstance(newline_ids, Mapping) else newline_ids)
        newline_ids = ids if not isinstance(newline_ids, Mapping) else newline_ids
        vocab_size = max([int(tokens.max()) + 1 if tokens.numel() else 1]
                         + [i + 1 for i in ids if isinstance(i, int) and i >= 0])
    return newline_table(newline_ids, vocab_size, tokens.device)


def _segments_from_tokens(input_ids: Tensor, table: Tensor) -> Tensor:
    # a token's line = newlines in the tokens before it (exclusive cumsum), as the data pipeline counts lines
    bad = (input_ids < 0) | (input_ids >= table.shape[0])
    if bool(bad.any()):
        raise ValueError(f"input_ids holds token id {int(input_ids[bad][0])}, outside 0..{table.shape[0] - 1} "
                         f"(vocab_size={table.shape[0]} of the newline table)")
    counts = table.to(input_ids.device)[input_ids.long()]                       # [b, n]
    return counts.cumsum(-1) - counts


def code_positions(input_ids: Tensor, newline_ids: NewlineIds = None, vocab_size: Optional[int] = None,
                   flat_levels: bool = False, num_levels: int = 5, offset: int = 0) -> Positions:
    """Positions from token ids alone (no syntax tree), for users without the data pipeline.

    * ``ids`` = ``offset + 0..n-1``;
    * ``segments`` = line index from ``newline_ids`` (see `newline_table`; ``vocab_size`` defaults to
      ``max(input_ids) + 1``), absent when ``newline_ids`` is None;
    * ``levels`` (only with ``flat_levels=True``) = the token index in all ``num_levels`` columns: every token its
      own unit at every level, so HiRoPE reduces exactly to RoPE on token indices.
    """
    if not isinstance(input_ids, Tensor) or input_ids.ndim != 2 or input_ids.is_floating_point():
        raise ValueError(f"input_ids must be an int [b, n] tensor, got "
                         f"{tuple(input_ids.shape) if isinstance(input_ids, Tensor) else type(input_ids).__name__}")
    b, n = input_ids.shape
    ids = torch.arange(offset, offset + n, device=input_ids.device).expand(b, n)
    pos = Positions(ids=ids)
    if newline_ids is not None:
        pos.segments = _segments_from_tokens(input_ids, _table_for(newline_ids, input_ids, vocab_size))
    if flat_levels:
        pos.levels = ids[..., None].expand(b, n, num_levels)
    return pos


def _batched(t: Tensor, b: int, token_axis: int) -> Tensor:
    # [n, ...] fields shared by the batch -> [b, n, ...]
    return t.unsqueeze(0).expand(b, *t.shape) if t.ndim == (1 if token_axis == -1 else 2) else t


def extend_positions(pos: Positions, tokens: Tensor, newline_ids: NewlineIds = None) -> Positions:
    """Positions of ``tokens`` ``[b, n + k]`` given ``pos`` for their first ``n`` (the generation rule of the module
    docstring): ids and the token-level column +1 per token, coarser levels repeated, segments + newlines of the
    preceding token, mask True."""
    if pos.grid is not None or pos.boxes is not None:
        raise ValueError("extend_positions: grid/boxes positions cannot be extended; pass generate(pos_fn=...)")
    n = pos.num_tokens
    if n is None:
        raise ValueError("extend_positions: pos has no per-token field (ids, levels, segments, mask) to extend")
    b, total = tokens.shape
    k = total - n
    if k < 0:
        raise ValueError(f"extend_positions: pos describes {n} tokens but only {total} tokens were given")
    step = torch.arange(1, k + 1, device=tokens.device)                          # [k]
    out = {}
    if pos.ids is not None:
        ids = _batched(pos.ids, b, -1)
        out["ids"] = torch.cat([ids, ids[:, -1:] + step.to(ids.dtype)], dim=-1)
    if pos.levels is not None:
        lv = _batched(pos.levels, b, -2)                                         # [b, n, L]
        new = lv[:, -1:].expand(b, k, lv.shape[-1]).clone()                      # [b, k, L]
        new[..., -1] += step.to(lv.dtype)
        out["levels"] = torch.cat([lv, new], dim=1)
    if pos.segments is not None:
        seg = _batched(pos.segments, b, -1)
        if newline_ids is None:
            add = torch.zeros(b, k, dtype=seg.dtype, device=seg.device)
        else:
            table = _table_for(newline_ids, tokens)
            add = table[tokens[:, n - 1: total - 1].long()].cumsum(-1).to(seg.dtype)  # [b, k]
        out["segments"] = torch.cat([seg, seg[:, -1:] + add], dim=-1)
    if pos.mask is not None:
        m = _batched(pos.mask, b, -1)
        out["mask"] = torch.cat([m, torch.ones(b, k, dtype=m.dtype, device=m.device)], dim=-1)
    return Positions(**out, causal=pos.causal)


# ---- model ------------------------------------------------------------------------------------------------------

class CodeLM(DecoderLM):
    """Pre-norm decoder LM with a pluggable positional encoding, tied LM head and a KV cache (`zoo.nn.DecoderLM`).

    Args:
        vocab_size: tokens of the vocabulary.
        dim, depth, num_heads, mlp_ratio: width ``c``, blocks, heads, MLP hidden ratio.
        pe: a preset kind ``"nope" | "rope" | "alibi" | "hirope" | "bipe" | "bipe_alibi"`` (`PE_KINDS`, defaults
            in `ENCODINGS`), or any 1D encoding of `zoo.pe`: a registered name (``"rope_yarn"``, ``"fire"``) or
            ``{"name": ..., **kwargs}``, built for this model's geometry (``max_len = max_seq_len``: the original
            length of context-extension variants).  Other positions kinds raise `zoo.nn.fit.PEFitError`; an
            encoding that is not ``causal_ok`` builds with a warning and refuses KV-cache decoding.
        pe_kwargs: overrides for the attention encoding (RoPE/HiRoPE/BiPERoPE: ``base``, ``layout``; HiRoPE:
            ``levels``, ``split``, ``window``, ``within_parent``; ALiBi: ``num_alibi_heads``).  Defaults in
            `ENCODINGS`: RoPE base 10000, HiRoPE ``levels=(2, -1)`` (function, token), ``split=0.5``, ``window=0``.
        max_seq_len: the length the model is meant for; longer inputs (cached + new keys) raise unless
            ``allow_longer`` (an attribute, can be flipped after building).
        max_intra: rows of BiPE's intra-line table (official ``train_scale`` 1024); intra positions clip there.
        newline_ids: ids that end a line (see `newline_table`): used to build segments when ``pos`` is not given
            and to advance them during `generate`.
        init_std: normal init of linear and embedding weights; residual projections get ``init_std/sqrt(2*depth)``.
        attention: attention options (`zoo.nn.options`: window, sinks, block, per_document, temperature,
            extension), e.g. ``{"extension": {"name": "self_extend", "group": 4, "window": 128}}`` on a model loaded
            with ``pretrained_file=``; `set_attention` changes them later.

    The encoding is shared by all blocks (it has no parameters); BiPE's intra table is ``intra_pe.weight``.
    """

    positions_hint = " (build them with domains.code.data, or code_positions(input_ids, ...))"

    def __init__(self, vocab_size: int = 8192, dim: int = 128, depth: int = 4, num_heads: int = 4,
                 mlp_ratio: float = 4.0, pe: str = "nope", pe_kwargs: Optional[dict] = None, max_seq_len: int = 1024,
                 allow_longer: bool = False, max_intra: int = 1024, newline_ids: NewlineIds = None,
                 attention: Optional[dict] = None, qkv_bias: bool = True, drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 norm_eps: float = 1e-5, init_std: float = 0.02):
        check_positive_ints(vocab_size=vocab_size, dim=dim, depth=depth, num_heads=num_heads, max_seq_len=max_seq_len,
                            max_intra=max_intra)
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        super().__init__(
            vocab_size, dim=dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
            **preset_encodings(pe, pe_kwargs, PE_KINDS, ENCODINGS, max_intra, init_std), max_seq_len=max_seq_len,
            allow_longer=allow_longer, attention=attention, qkv_bias=qkv_bias, drop=drop, attn_drop=attn_drop, drop_path=drop_path,
            norm_eps=norm_eps, init_std=init_std)
        self.max_intra = max_intra
        spec = pe if isinstance(pe, str) else (any_spec(pe) if spec_label(pe) is not None else None)  # module: None
        self.config = dict(vocab_size=vocab_size, dim=dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                           pe=spec, pe_kwargs=dict(pe_kwargs or {}),
                           max_seq_len=max_seq_len, max_intra=max_intra)
        if not self.attention.empty:
            self.config["attention"] = self.attention.to_dict()
        self.register_buffer("newline_counts", newline_table(newline_ids, vocab_size), persistent=False)  # [vocab]

    def default_positions(self, input_ids: Tensor, past: int = 0) -> Positions:
        """Positions when none are given: token indices of all ``past + n`` keys, plus line segments from
        ``newline_ids`` when the model has them and nothing is cached; never levels."""
        if past == 0:
            return code_positions(input_ids, self.newline_counts, self.vocab_size)
        return super().default_positions(input_ids, past)

    def next_positions(self, tokens: Tensor, pos: Positions) -> Positions:
        """`extend_positions` with the model's ``newline_ids`` (the rule of the module docstring)."""
        return extend_positions(pos, tokens, self.newline_counts)


register_family("code LM", positions=CodeLM.pe_positions, causal=True, models="code_lm_*",
                note="decoder: attention hooks in every block (one shared module), embed hooks on the tokens")


# ---- entrypoints ------------------------------------------------------------------------------------------------

_TINY = dict(dim=128, depth=4, num_heads=4)
_SMALL = dict(dim=256, depth=6, num_heads=8)


def _create(kind: str, variant: dict, **kwargs) -> CodeLM:
    args = dict(vocab_size=8192, max_seq_len=1024, pe=kind, **variant)
    args.update(kwargs)                                                  # pe= swaps the preset's encoding
    return CodeLM(**args)


@register_model(paper=PAPERS["nope"])
def code_lm_nope_tiny(**kwargs) -> CodeLM:
    """Code LM, no positional encoding (NoPE; Kazemnejad et al., NeurIPS 2023); dim 128, depth 4, 4 heads."""
    return _create("nope", _TINY, **kwargs)


@register_model(paper=PAPERS["nope"])
def code_lm_nope_small(**kwargs) -> CodeLM:
    """Code LM, no positional encoding (NoPE; Kazemnejad et al., NeurIPS 2023); dim 256, depth 6, 8 heads."""
    return _create("nope", _SMALL, **kwargs)


@register_model(paper=PAPERS["rope"])
def code_lm_rope_tiny(**kwargs) -> CodeLM:
    """Code LM with RoPE base 10000 on token indices (Su et al., RoFormer); dim 128, depth 4, 4 heads."""
    return _create("rope", _TINY, **kwargs)


@register_model(paper=PAPERS["rope"])
def code_lm_rope_small(**kwargs) -> CodeLM:
    """Code LM with RoPE base 10000 on token indices (Su et al., RoFormer); dim 256, depth 6, 8 heads."""
    return _create("rope", _SMALL, **kwargs)


@register_model(paper=PAPERS["alibi"])
def code_lm_alibi_tiny(**kwargs) -> CodeLM:
    """Code LM with causal ALiBi (Press et al., ICLR 2022); dim 128, depth 4, 4 heads."""
    return _create("alibi", _TINY, **kwargs)


@register_model(paper=PAPERS["alibi"])
def code_lm_alibi_small(**kwargs) -> CodeLM:
    """Code LM with causal ALiBi (Press et al., ICLR 2022); dim 256, depth 6, 8 heads."""
    return _create("alibi", _SMALL, **kwargs)


@register_model(paper=PAPERS["hirope"])
def code_lm_hirope_tiny(**kwargs) -> CodeLM:
    """Code LM with HiRoPE on (function, token) levels (Zhang et al., ACL 2024); dim 128, depth 4, 4 heads.

    RoPE base 10000, half the rotary pairs each level, no window (see the module docstring)."""
    return _create("hirope", _TINY, **kwargs)


@register_model(paper=PAPERS["hirope"])
def code_lm_hirope_small(**kwargs) -> CodeLM:
    """Code LM with HiRoPE on (function, token) levels (Zhang et al., ACL 2024); dim 256, depth 6, 8 heads.

    RoPE base 10000, half the rotary pairs each level, no window (see the module docstring)."""
    return _create("hirope", _SMALL, **kwargs)


@register_model(paper=PAPERS["bipe"])
def code_lm_bipe_tiny(**kwargs) -> CodeLM:
    """Code LM with BiPE-RoPE on lines (He et al., ICML 2024); dim 128, depth 4, 4 heads.

    Intra-line learned table (1024 rows, clipped) + RoPE base 10000 on the line index."""
    return _create("bipe", _TINY, **kwargs)


@register_model(paper=PAPERS["bipe"])
def code_lm_bipe_small(**kwargs) -> CodeLM:
    """Code LM with BiPE-RoPE on lines (He et al., ICML 2024); dim 256, depth 6, 8 heads.

    Intra-line learned table (1024 rows, clipped) + RoPE base 10000 on the line index."""
    return _create("bipe", _SMALL, **kwargs)
