"""DNA transformers, one per positional encoding: bidirectional encoders (MLM + sequence classification) and causal
decoders (next-base LM with a KV cache and ``generate``).

    input_ids [b, n] --tok_emb--> [b, n, c] (+ BiPE intra-segment table) --Blocks(pe, causal?)--> norm --> x [b, n, c]
        num_classes == 0 : head (tied to tok_emb) --> token logits [b, n, vocab]   (MLM for encoders, next token
                                                                                      for decoders)
        num_classes  > 0 : pool (cls | mean | last) --> classifier --> class logits [b, num_classes]

Names.  ``dna_{pe}_{tiny,small}`` are encoders, ``dna_lm_{pe}_{tiny,small}`` the decoders of the same size (separate
names, not a flag: a registry name says what the model is; ``causal=`` cannot be passed to an entrypoint).  Sizes:
tiny = dim 128, depth 4, 4 heads; small = dim 256, depth 6, 8 heads.  ``vocab_size`` defaults to the nucleotide
tokenizer's 12 ids (``domains.genomics.tokenizers``: 7 specials + A C G T + N); tasks pass their tokenizer's size.

Encodings (one module shared by every block; for T5 that is the paper's choice, for KERPLE/FIRE ours)::

    nope    nothing                                    (Kazemnejad et al., NeurIPS 2023)
    alibi   ALiBi on token indices; symmetric |i - j| for encoders, causal for decoders (Press et al., ICLR 2022)
    rope    RoPE base 10000 on token indices           (Su et al., RoFormer)
    kerple  KERPLE-log; symmetric for encoders         (Chi et al., NeurIPS 2022)
    fire    FIRE; bidirectional variant for encoders   (Li et al., ICLR 2024)
    t5      T5 buckets (32 / 128), bidirectional for encoders (Raffel et al., JMLR 2020)
    bipe    BiPE-RoPE on DNA segments (He et al., ICML 2024): learned intra-segment table + RoPE base 10000 on the
            segment index

BiPE segments.  A segment is ``segment_bases`` consecutive bases (default 3: codon-sized triplets) counted from the
first base of the sequence (or window) by the tokens' base spans: a token belongs to segment ``start // W`` where
``start`` is the first base it covers.  Each special token (``<cls>``, ``<sep>``, ...) is a segment of its own.  With
the nucleotide tokenizer that is exactly "three bases per segment, intra = 0 1 2"; with k-mer tokenizers a segment
holds the tokens that start in the same triplet.  The triplets follow the biological reading frame only when the
sequence starts in frame (the data do not tell).  ``dna_positions(input_ids, spans)`` builds the Positions; without
spans every non-special token is taken to be one base (the nucleotide tokenizer).

Positions (``zoo.Positions``): ``ids`` = token index, ``segments`` = segment index (BiPE), ``mask`` = real tokens;
``forward(input_ids)`` without ``pos`` uses `dna_positions` with the model's ``segment_bases``.  Length: inputs over
``max_seq_len`` tokens (cached + new) raise unless ``allow_longer=True`` (an attribute too): every relative encoding
here can then run longer for extrapolation studies (BiPE's intra table clips at ``max_intra - 1``).
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import Tensor

from domains.genomics.tokenizers import SPECIAL_TOKENS
from zoo.nn.fit import register_family
from zoo.nn.transformer import POOLS, TransformerEncoder, check_positive_ints, preset_encodings, segment_intra
from zoo.positions import Positions
from zoo.registry import register_model

__all__ = ["DNATransformer", "PE_KINDS", "ENCODINGS", "POOLS", "NUM_SPECIAL", "NUCLEOTIDE_VOCAB", "dna_positions",
           "segment_intra", "checkpoint_filter_fn"]

NUM_SPECIAL = len(SPECIAL_TOKENS)               # ids 0..6 are <pad> <cls> <sep> <mask> <unk> <bos> <eos>
PAD_ID, CLS_ID = SPECIAL_TOKENS.index("<pad>"), SPECIAL_TOKENS.index("<cls>")
NUCLEOTIDE_VOCAB = NUM_SPECIAL + 5              # + A C G T N
PAPERS = {
    "nope": "https://arxiv.org/abs/2305.19466", "alibi": "https://arxiv.org/abs/2108.12409",
    "rope": "https://arxiv.org/abs/2104.09864", "kerple": "https://arxiv.org/abs/2205.09921",
    "fire": "https://arxiv.org/abs/2310.04418", "t5": "https://arxiv.org/abs/1910.10683",
    "bipe": "https://arxiv.org/abs/2401.16421",
}
#: encoding kind -> the Positions fields the model reads
PE_KINDS: Dict[str, tuple] = {"nope": (), "alibi": ("ids",), "rope": ("ids",), "kerple": ("ids",),
                              "fire": ("ids",), "t5": ("ids",), "bipe": ("segments",)}
#: encoding kind -> its spec for `zoo.pe.build` (the model's geometry and causality are added: ``causal``, T5's
#: ``bidirectional = not causal``)
ENCODINGS = {"nope": None, "alibi": "alibi", "rope": {"name": "rope", "base": 10000.0}, "kerple": "kerple_log",
             "fire": "fire", "t5": "t5", "bipe": {"name": "bipe_rope", "base": 10000.0}}


# ---- positions --------------------------------------------------------------------------------------------------

def dna_positions(input_ids: Tensor, spans: Optional[Tensor] = None, mask: Optional[Tensor] = None,
                  segment_bases: int = 3, causal: bool = False) -> Positions:
    """Positions of DNA tokens: ``ids`` = token index ``0..n-1``, ``segments`` = BiPE segment index (module
    docstring), ``mask`` as given (True = real token).

    Args:
        input_ids: int ``[b, n]``.
        spans: ``[b, n, 2]`` (or ``[n, 2]``) base spans from the tokenizer, ``(-1, -1)`` at special/padding tokens;
            None: every token with id >= 7 is one base, in order.
        segment_bases: bases per segment ``W``.
    """
    if not isinstance(input_ids, Tensor) or input_ids.ndim != 2 or input_ids.is_floating_point():
        got = (f"{input_ids.dtype} {tuple(input_ids.shape)}" if isinstance(input_ids, Tensor)
               else type(input_ids).__name__)
        raise ValueError(f"input_ids must be an int [b, n] tensor, got {got}")
    if isinstance(segment_bases, bool) or not isinstance(segment_bases, int) or segment_bases < 1:
        raise ValueError(f"segment_bases must be a positive int, got {segment_bases!r}")
    b, n = input_ids.shape
    dev = input_ids.device
    if spans is None:
        is_base = input_ids >= NUM_SPECIAL
        start = is_base.long().cumsum(-1) - 1                                     # [b, n] base index of a token
    else:
        if spans.shape[-1] != 2 or spans.shape[-2] != n or spans.ndim not in (2, 3):
            raise ValueError(f"spans must be [b, n, 2] or [n, 2] with n = {n} tokens, got {tuple(spans.shape)}")
        start = spans[..., 0].to(dev).long().expand(b, n)
        is_base = start >= 0
    idx = torch.arange(n, device=dev).expand(b, n)
    # each special token (and padding) is its own segment: give it a key no base token can have
    key = torch.where(is_base, torch.div(start, segment_bases, rounding_mode="floor"), -1 - idx)
    new = torch.ones(b, n, dtype=torch.bool, device=dev)
    new[:, 1:] = key[:, 1:] != key[:, :-1]
    segments = new.long().cumsum(-1) - 1                                          # [b, n] from 0
    return Positions(ids=idx, segments=segments, mask=mask, causal=causal)


# ---- model ------------------------------------------------------------------------------------------------------

class DNATransformer(TransformerEncoder):
    """Pre-norm transformer over DNA tokens with a pluggable positional encoding (`zoo.nn.TransformerEncoder`).

    Args:
        vocab_size: ids of the tokenizer (12 = nucleotide).
        dim, depth, num_heads, mlp_ratio: width, blocks, heads, MLP ratio.
        pe: a preset kind of `PE_KINDS` (defaults in `ENCODINGS`), or any 1D encoding of `zoo.pe`: a registered
            name or ``{"name": ..., **kwargs}`` built for this geometry (``causal`` decides ALiBi / T5 / FIRE
            direction); other positions kinds raise `zoo.nn.fit.PEFitError`; in a decoder, an encoding that is
            not ``causal_ok`` builds with a warning and refuses KV-cache decoding.
        causal: decoder (causal mask, KV cache, ``generate``) or encoder (bidirectional).
        num_classes: 0 = token logits (tied LM/MLM head); > 0 = sequence classification logits.
        pool: ``"cls"`` (first token, encoders' default), ``"mean"`` (over ``pos.mask``) or ``"last"`` (last real
            token, decoders' default; a causal model's first token sees nothing else).
        pe_kwargs: overrides for the attention encoding (e.g. ALiBi ``num_alibi_heads``, FIRE ``init_L``, T5
            ``num_buckets``, RoPE ``base``); defaults in `ENCODINGS`.
        max_seq_len, allow_longer: length limit (module docstring).
        segment_bases: BiPE segment size in bases (used when ``pos`` is built here).
        max_intra: rows of the BiPE intra table (segments hold ``segment_bases`` tokens at most with the nucleotide
            tokenizer; longer ones clip).
        attention: attention options (`zoo.nn.options`: window, sinks, block, per_document, temperature,
            extension); `set_attention` changes them later.
    """

    positions_hint = (" (build them with domains.genomics.models.dna_positions or model.positions(input_ids, spans, "
                      "mask))")
    decoder_hint = " (dna_lm_*)"

    def __init__(self, vocab_size: int = NUCLEOTIDE_VOCAB, dim: int = 128, depth: int = 4, num_heads: int = 4,
                 mlp_ratio: float = 4.0, pe: str = "nope", causal: bool = False, num_classes: int = 0,
                 pool: Optional[str] = None, pe_kwargs: Optional[dict] = None, max_seq_len: int = 1024,
                 allow_longer: bool = False, segment_bases: int = 3, max_intra: int = 64,
                 attention: Optional[dict] = None, qkv_bias: bool = True,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0, head_drop: float = 0.0,
                 norm_eps: float = 1e-5, init_std: float = 0.02):
        check_positive_ints(vocab_size=vocab_size, dim=dim, depth=depth, num_heads=num_heads, max_seq_len=max_seq_len,
                            segment_bases=segment_bases, max_intra=max_intra)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0 (0 = token logits), got {num_classes!r}")
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        super().__init__(
            vocab_size, dim=dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
            **preset_encodings(pe, pe_kwargs, PE_KINDS, ENCODINGS, max_intra, init_std),
            causal=causal, num_classes=num_classes, pool=pool, max_seq_len=max_seq_len, allow_longer=allow_longer,
            attention=attention, qkv_bias=qkv_bias, drop=drop, attn_drop=attn_drop, drop_path=drop_path, head_drop=head_drop,
            norm_eps=norm_eps, init_std=init_std)
        self.segment_bases, self.max_intra = segment_bases, max_intra

    def positions(self, input_ids: Tensor, spans: Optional[Tensor] = None, mask: Optional[Tensor] = None
                  ) -> Positions:
        """`dna_positions` with this model's ``segment_bases`` and causality."""
        return dna_positions(input_ids, spans, mask, self.segment_bases, self.causal)

    def default_positions(self, input_ids: Tensor, past: int = 0) -> Positions:
        """`positions` of ``input_ids``; with a non-empty cache the caller must pass them (segments of past tokens
        are not known here)."""
        if past:
            raise ValueError("with a non-empty cache, pass pos describing all keys (past and new)")
        return self.positions(input_ids)

    def next_positions(self, tokens: Tensor, pos: Positions) -> Positions:
        """`positions` of every token so far (token indices and nucleotide segments)."""
        return self.positions(tokens)


register_family("DNA encoder", positions=DNATransformer.pe_positions, causal=False, models="dna_<pe>_*",
                note="bidirectional: attention hooks in every block (one shared module), embed hooks on the tokens")
register_family("DNA LM", positions=DNATransformer.pe_positions, causal=True, models="dna_lm_*",
                note="decoder: as the DNA encoder, causal, with a KV cache")


def checkpoint_filter_fn(state_dict: dict, model: DNATransformer) -> dict:
    """Load pretrained weights into a model with another head: classifier weights that are missing (an MLM or LM
    checkpoint) or shaped for another class count are taken from ``model``'s fresh init; a classifier the model
    does not have is dropped.  Everything else must match (the registry's loader names what does not)."""
    out = dict(state_dict)
    own = model.state_dict()
    for k in [k for k in out if k.startswith("classifier.")]:
        if k not in own:
            del out[k]
    for k, v in own.items():
        if k.startswith("classifier.") and (k not in out or tuple(out[k].shape) != tuple(v.shape)):
            out[k] = v
    if "head.weight" not in out and "tok_emb.weight" in out:
        out["head.weight"] = out["tok_emb.weight"]                               # tied
    return out


# ---- entrypoints ------------------------------------------------------------------------------------------------

_TINY = dict(dim=128, depth=4, num_heads=4)
_SMALL = dict(dim=256, depth=6, num_heads=8)


def _create(pe: str, variant: dict, is_decoder: bool, kwargs: dict) -> DNATransformer:
    if "causal" in kwargs:
        raise ValueError("causal= is fixed by the model name: dna_<pe>_* are encoders, dna_lm_<pe>_* decoders")
    args = dict(vocab_size=NUCLEOTIDE_VOCAB, max_seq_len=1024, pe=pe, causal=is_decoder, **variant)
    args.update(kwargs)
    return DNATransformer(**args)


_DESC = {"nope": "no positional encoding (NoPE)", "alibi": "ALiBi on token indices",
         "rope": "RoPE base 10000 on token indices", "kerple": "KERPLE-log on token indices",
         "fire": "FIRE on token indices", "t5": "T5 relative buckets (32/128)",
         "bipe": "BiPE-RoPE on codon-sized segments (intra table + RoPE on the segment index)"}


def _register(pe: str, size: str, variant: dict, causal: bool) -> None:
    name = f"dna_lm_{pe}_{size}" if causal else f"dna_{pe}_{size}"
    kind = "decoder LM" if causal else "encoder (MLM / classification)"

    def entry(**kwargs) -> DNATransformer:
        return _create(pe, variant, causal, kwargs)

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = (f"DNA {kind}, {_DESC[pe]}; dim {variant['dim']}, depth {variant['depth']}, "
                     f"{variant['num_heads']} heads.")
    register_model(entry, name=name, domain="genomics", paper=PAPERS[pe], filter_fn=checkpoint_filter_fn)


for _pe in PE_KINDS:
    for _size, _variant in (("tiny", _TINY), ("small", _SMALL)):
        for _causal in (False, True):
            _register(_pe, _size, _variant, _causal)
del _pe, _size, _variant, _causal
