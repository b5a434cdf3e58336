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

from typing import Callable, Dict, Iterable, List, Mapping, Optional, Union

import torch
from torch import Tensor, nn

from zoo.nn import Block, shared_encodings
from zoo.nn.attention import KVCache
from zoo.nn.generation import (check_generate_args, check_input_ids, check_positions, check_prompt, check_seq_len,
                               decode)
from zoo.nn.layers import init_decoder_weights
from zoo.pe.alibi import ALiBi
from zoo.pe.bipe import BiPEALiBi, BiPEIntraEmbedding, BiPERoPE
from zoo.pe.hirope import HiRoPE
from zoo.pe.rope import RoPE
from zoo.positions import Positions
from zoo.registry import register_model

__all__ = ["CodeLM", "PE_KINDS", "line_intra", "newline_table", "newline_counts_from_tokenizer", "code_positions",
           "extend_positions"]

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
NewlineIds = Union[None, Tensor, Mapping[int, int], Iterable[int]]


# ---- positions --------------------------------------------------------------------------------------------------

def line_intra(segments: Tensor, max_intra: Optional[int] = None) -> Tensor:
    """Index of every token inside its segment (line): ``j - first(j)``, ``first(j)`` = the first token of the run
    of equal segment ids that contains ``j``; clipped at ``max_intra - 1`` (BiPE's ``train_scale``).

    ``segments`` ``[b, n]`` or ``[n]`` (non-decreasing line ids) -> int64, same shape.  On ids from
    `zoo.pe.bipe.bipe_ids` this gives back its intra positions."""
    if not isinstance(segments, Tensor) or segments.ndim not in (1, 2):
        raise ValueError(f"segments must be a [b, n] or [n] tensor, got "
                         f"{tuple(segments.shape) if isinstance(segments, Tensor) else type(segments).__name__}")
    n = segments.shape[-1]
    idx = torch.arange(n, device=segments.device).expand(segments.shape)        # [b?, n]
    start = torch.ones(segments.shape, dtype=torch.bool, device=segments.device)
    start[..., 1:] = segments[..., 1:] != segments[..., :-1]                     # a new line starts here
    first = torch.where(start, idx, torch.zeros_like(idx)).cummax(dim=-1).values  # [b?, n] its line's first token
    intra = idx - first
    return intra if max_intra is None else intra.clamp(max=max_intra - 1)


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

class CodeLM(nn.Module):
    """Pre-norm decoder LM with a pluggable positional encoding, tied LM head and a KV cache.

    Args:
        vocab_size: tokens of the vocabulary.
        dim, depth, num_heads, mlp_ratio: width ``c``, blocks, heads, MLP hidden ratio.
        pe: ``"nope" | "rope" | "alibi" | "hirope" | "bipe" | "bipe_alibi"`` (`PE_KINDS`).
        pe_kwargs: overrides for the attention encoding (RoPE/HiRoPE/BiPERoPE: ``base``, ``layout``; HiRoPE:
            ``levels``, ``split``, ``window``, ``within_parent``; ALiBi: ``num_alibi_heads``).  Defaults: RoPE base
            10000, HiRoPE ``levels=(2, -1)`` (function, token), ``split=0.5``, ``window=0``.
        max_seq_len: the length the model is meant for; longer inputs (cached + new keys) raise unless
            ``allow_longer`` (an attribute, can be flipped after building).
        max_intra: rows of BiPE's intra-line table (official ``train_scale`` 1024); intra positions clip there.
        newline_ids: ids that end a line (see `newline_table`): used to build segments when ``pos`` is not given
            and to advance them during `generate`.
        init_std: normal init of linear and embedding weights; residual projections get ``init_std/sqrt(2*depth)``.

    The encoding is shared by all blocks (it has no parameters); BiPE's intra table is ``intra_pe.weight``.
    """

    def __init__(self, vocab_size: int = 8192, dim: int = 128, depth: int = 4, num_heads: int = 4,
                 mlp_ratio: float = 4.0, pe: str = "nope", pe_kwargs: Optional[dict] = None, max_seq_len: int = 1024,
                 allow_longer: bool = False, max_intra: int = 1024, newline_ids: NewlineIds = None,
                 qkv_bias: bool = True, drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 norm_eps: float = 1e-5, init_std: float = 0.02):
        super().__init__()
        for name, v in (("vocab_size", vocab_size), ("dim", dim), ("depth", depth), ("num_heads", num_heads),
                        ("max_seq_len", max_seq_len), ("max_intra", max_intra)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if pe not in PE_KINDS:
            raise ValueError(f"pe must be one of {tuple(PE_KINDS)}, got {pe!r}")
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.vocab_size, self.dim, self.depth, self.num_heads = vocab_size, dim, depth, num_heads
        self.pe_kind, self.max_seq_len, self.allow_longer, self.max_intra = pe, max_seq_len, bool(allow_longer), \
            max_intra
        head_dim = dim // num_heads
        attn_pe = self._build_pe(pe, head_dim, num_heads, dict(pe_kwargs or {}))
        self.config = dict(vocab_size=vocab_size, dim=dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                           pe=pe, pe_kwargs=dict(pe_kwargs or {}), max_seq_len=max_seq_len, max_intra=max_intra)

        self.tok_emb = nn.Embedding(vocab_size, dim)
        self.intra_pe = BiPEIntraEmbedding(max_intra, dim, init_std=init_std) if pe.startswith("bipe") else None
        self.drop = nn.Dropout(drop)
        dpr = [drop_path * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList([
            Block(dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop=drop, attn_drop=attn_drop,
                  drop_path=dpr[i], pe=attn_pe, causal=True, norm_eps=norm_eps) for i in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.head = nn.Linear(dim, vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight                                   # tied
        table = newline_table(newline_ids, vocab_size)
        self.register_buffer("newline_counts", table, persistent=False)         # [vocab] or None
        self._init_weights(init_std)

    @staticmethod
    def _build_pe(kind: str, head_dim: int, num_heads: int, kw: dict) -> Optional[nn.Module]:
        if kind == "nope":
            if kw:
                raise ValueError(f"pe='nope' takes no pe_kwargs, got {sorted(kw)}")
            return None
        if kind == "rope":
            return RoPE(head_dim, **{"base": 10000.0, **kw})
        if kind == "alibi":
            return ALiBi(num_heads, **{"causal": True, **kw})
        if kind == "hirope":
            return HiRoPE(head_dim, **{"base": 10000.0, "levels": (2, -1), "split": 0.5, "window": 0, **kw})
        if kind == "bipe":
            return BiPERoPE(head_dim, **{"base": 10000.0, **kw})
        return BiPEALiBi(num_heads, **{"causal": True, **kw})

    def _init_weights(self, std: float) -> None:
        init_decoder_weights(self, self.depth, std)
        nn.init.normal_(self.tok_emb.weight, std=std)

    # ---- positions ----------------------------------------------------------------------------------------
    @property
    def needs(self) -> tuple:
        """The Positions fields this model reads."""
        return PE_KINDS[self.pe_kind]

    def default_positions(self, input_ids: Tensor, past: int = 0) -> Positions:
        """Positions when none are given: token indices of all ``past + n`` keys, plus line segments from
        ``newline_ids`` when the model has them and nothing is cached; never levels."""
        if past == 0:
            return code_positions(input_ids, self.newline_counts, self.vocab_size)
        b, n = input_ids.shape
        return Positions(ids=torch.arange(past + n, device=input_ids.device).expand(b, past + n))

    def _check_positions(self, pos: Positions, b: int, nk: int, past: int) -> None:
        check_positions(pos, self.needs, b, nk, past, f"CodeLM(pe={self.pe_kind!r})",
                        " (build them with domains.code.data, or code_positions(input_ids, ...))")

    # ---- forward ------------------------------------------------------------------------------------------
    def make_cache(self) -> List[KVCache]:
        """An empty KV cache: one `KVCache` per block."""
        return [KVCache() for _ in self.blocks]

    init_cache = make_cache

    def forward(self, input_ids: Tensor, pos: Optional[Positions] = None,
                cache: Optional[List[KVCache]] = None) -> Tensor:
        """Logits ``[b, n, vocab]`` for ``input_ids`` ``[b, n]``.

        With ``cache`` (from `make_cache`), ``input_ids`` are the new tokens only, ``pos`` describes all tokens
        (cached + new) and every layer's cache is extended.  ``input_ids`` must hold at least one token, each in
        ``0 .. vocab_size - 1``."""
        check_input_ids(input_ids, self.vocab_size)
        if cache is not None and (len(cache) != self.depth or not all(isinstance(c, KVCache) for c in cache)):
            raise ValueError(f"cache must be a list of {self.depth} KVCache (model.make_cache()), got "
                             f"{type(cache).__name__} of length {len(cache) if hasattr(cache, '__len__') else '?'}")
        b, n = input_ids.shape
        past = cache[0].length if cache is not None else 0
        nk = past + n
        check_seq_len(n, past, self.max_seq_len, self.allow_longer,
                      " (BiPE's intra-line positions clip at max_intra - 1)" if self.intra_pe else "")
        if pos is None:
            pos = self.default_positions(input_ids, past)
        self._check_positions(pos, b, nk, past)
        x = self.tok_emb(input_ids)                                              # [b, n, c]
        if self.intra_pe is not None:
            intra = line_intra(pos.segments.to(input_ids.device), self.max_intra)   # [b?, nk]
            x = self.intra_pe.embed(x, Positions(ids=intra[..., past:]))
        x = self.drop(x)
        with shared_encodings(self.blocks, pos):                                # one bias per forward
            for i, blk in enumerate(self.blocks):
                x = blk(x, pos, None if cache is None else cache[i])
        return self.head(self.norm(x))                                           # [b, n, vocab]

    # ---- generation ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, input_ids: Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: Optional[int] = None,
                 use_cache: bool = True, generator: Optional[torch.Generator] = None,
                 pos_fn: Optional[Callable[[Tensor, Positions], Positions]] = None,
                 pos: Optional[Positions] = None) -> Tensor:
        """Append ``max_new_tokens`` sampled tokens to ``input_ids`` ``[b, n]``; returns ``[b, n + max_new_tokens]``.

        Args:
            temperature: 0 = greedy (argmax); else sample from ``softmax(logits / temperature)``.
            top_k: sample among the ``top_k`` most likely tokens only.
            use_cache: decode one token at a time with a KV cache (else re-run the whole sequence each step).
            generator: a ``torch.Generator`` for reproducible sampling.
            pos_fn: ``pos_fn(tokens [b, m + k], pos of the first m) -> Positions of all m + k``; default
                `extend_positions` with the model's ``newline_ids`` (rule in the module docstring).
            pos: Positions of the prompt (default: `default_positions`).

        The model mode is left as it is (call ``eval()`` to turn dropout off)."""
        check_generate_args(max_new_tokens, temperature, top_k)
        check_prompt(input_ids, self.vocab_size)
        if pos_fn is None:
            def pos_fn(tokens, p):
                return extend_positions(p, tokens, self.newline_counts)
        if pos is None:
            pos = self.default_positions(input_ids)
        return decode(self, input_ids, pos, pos_fn, max_new_tokens, temperature, top_k,
                      self.make_cache() if use_cache else None, generator)



# ---- entrypoints ------------------------------------------------------------------------------------------------

_TINY = dict(dim=128, depth=4, num_heads=4)
_SMALL = dict(dim=256, depth=6, num_heads=8)


def _create(pe: str, variant: dict, **kwargs) -> CodeLM:
    args = dict(vocab_size=8192, max_seq_len=1024, pe=pe, **variant)
    args.update(kwargs)
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
