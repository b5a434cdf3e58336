"""Shared transformer bodies over token ids: a pre-norm encoder and a decoder LM with any 1D encoding.

    input_ids [b, n] --tok_emb--> [b, n, c] (+ embed_pe.embed: BiPE intra table, learned / sincos APE, ...)
        --Blocks(pe: rotate / bias hooks, causal?)--> norm --> x [b, n, c]
            num_classes == 0 : head (tied to tok_emb) --> token logits [b, n, vocab]      (MLM / next token)
            num_classes  > 0 : pool (cls | mean | last) --> classifier --> class logits [b, num_classes]

`TransformerEncoder` is the body (bidirectional, or causal with a KV cache and ``generate``); `DecoderLM` is the
same body fixed to causal.  Domain models are presets over them: they pick the encoding, the Positions fields it
reads (``needs``) and how positions are built from token ids (``default_positions`` / ``next_positions``); the
position builders themselves (syntax levels, codon segments, lines) stay in the domain.

The attention encoding ``pe`` is one module shared by every block, so ``shared_encodings`` builds a position-only
bias (ALiBi, T5, KERPLE, FIRE, BiPE-ALiBi) once per forward, and long inputs go through the attention's chunked
path (`zoo.nn.chunked`) unchanged.  With a KV cache, ``pos`` always describes every key (cached + new); the
embedding-level encoding sees the positions of the new tokens only.

Initialisation follows GPT-2 (`init_decoder_weights`; encodings keep their own init), after every layer is built in
the order tok_emb, embed_pe, blocks, norm, head, classifier, so that one seed gives the same weights whatever
preset builds the body.
"""
from __future__ import annotations

from typing import Callable, List, Mapping, Optional, Union

import torch
from torch import Tensor, nn

from ..pe.bipe import segment_intra
from ..positions import Positions
from ..errors import ConfigError
from .attention import KVCache, StreamingKVCache
from .block import Block, shared_encodings
from .fit import check_fit, needs_of, spec_name
from .generation import check_generate_args, check_input_ids, check_positions, check_prompt, check_seq_len, decode
from .layers import init_decoder_weights
from .options import AttentionOptions, attention_options

__all__ = ["TransformerEncoder", "DecoderLM", "POOLS", "any_spec", "spec_label", "segment_intra",
           "segment_intra_positions", "check_positive_ints", "preset_spec", "preset_encodings"]

POOLS = ("cls", "mean", "last")
#: an encoding: a built module, None, or a spec for `zoo.pe.build` (a registered name or {"name": ..., **kwargs})
Spec = Union[None, nn.Module, str, Mapping]


def check_positive_ints(**values) -> None:
    """Raise ``ValueError`` naming the first argument that is not a positive int."""
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name} must be a positive int, got {v!r}")


def preset_spec(table: Mapping[str, Spec], kind: str, pe_kwargs: Optional[dict] = None) -> Spec:
    """The encoding spec of a preset: ``table[kind]`` (None = no encoding, a registered name, or ``{"name": ...,
    **defaults}``) with ``pe_kwargs`` overriding the defaults."""
    if kind not in table:
        raise ValueError(f"pe must be one of {tuple(table)}, got {kind!r}")
    kw = dict(pe_kwargs or {})
    spec = table[kind]
    if spec is None:
        if kw:
            raise ValueError(f"pe={kind!r} takes no pe_kwargs, got {sorted(kw)}")
        return None
    return {**({"name": spec} if isinstance(spec, str) else spec), **kw}


def preset_encodings(pe: Spec, pe_kwargs: Optional[dict], kinds: Mapping[str, tuple], table: Mapping[str, Spec],
                     max_intra: int, init_std: float) -> dict:
    """The body's encoding keywords for a preset model's ``pe=``: one of its own ``kinds`` (kind -> the `Positions`
    fields it reads; its defaults in ``table``) or any registered encoding (`any_spec`).  A kind that reads
    ``segments`` is BiPE: it also gets the learned intra-segment table (``intra_pe``, ``max_intra`` rows) on the
    embeddings, as in the paper."""
    preset = isinstance(pe, str) and pe in kinds
    intra = preset and "segments" in kinds[pe]
    return dict(pe=preset_spec(table, pe, pe_kwargs) if preset else any_spec(pe, pe_kwargs, tuple(kinds)),
                embed_pe={"name": "bipe_intra", "max_intra": max_intra, "init_std": init_std} if intra else None,
                embed_pe_name="intra_pe" if intra else "embed_pe",
                embed_positions=segment_intra_positions if intra else None,
                needs=kinds[pe] if preset else None, pe_kind=pe if preset else spec_label(pe))


def any_spec(spec: Spec, pe_kwargs: Optional[dict] = None, kinds: tuple = ()) -> Spec:
    """A preset's ``pe=`` that is not one of its own ``kinds``: a registered name or ``{"name": ..., **kwargs}``
    (made a mapping, ``pe_kwargs`` overriding its keywords), or a built module (then no ``pe_kwargs``).  An unknown
    name raises `zoo.pe.PEConfigError` listing the preset kinds and the closest registered names."""
    from ..pe import PEConfigError, info
    kw = dict(pe_kwargs or {})
    if isinstance(spec, nn.Module):
        if kw:
            raise ValueError(f"pe_kwargs {sorted(kw)} cannot change an already built encoding module")
        return spec
    name = spec_name(spec)
    try:
        info(name)
    except PEConfigError as e:
        raise PEConfigError(f"pe must be one of {tuple(kinds)} (this model's presets) or a registered encoding: "
                            f"{e}") from None
    base = {} if isinstance(spec, str) else dict(spec if isinstance(spec, Mapping) else _container(spec))
    return {**base, "name": name, **kw}


def spec_label(spec: Spec) -> Optional[str]:
    """The encoding's name for messages and configs: the preset kind or registered name, None for a module."""
    return None if spec is None or isinstance(spec, nn.Module) else spec_name(spec)


def _container(node):
    from omegaconf import OmegaConf                                             # only when given an omegaconf node
    return OmegaConf.to_container(node, resolve=True)


# ---- positions --------------------------------------------------------------------------------------------------

def segment_intra_positions(pos: Positions, embed_pe: nn.Module) -> Positions:
    """Positions for BiPE's intra table (``embed_pe.max_intra`` rows): ``ids`` = `segment_intra` of
    ``pos.segments``."""
    return Positions(ids=segment_intra(pos.segments, embed_pe.max_intra))


segment_intra_positions.reads = ("segments",)                                     # what it reads of the input


def _build(spec: Spec, geometry: dict) -> Optional[nn.Module]:
    if spec is None or isinstance(spec, nn.Module):
        return spec
    from ..pe import build
    return build(spec, **geometry)


# ---- bodies -----------------------------------------------------------------------------------------------------

class TransformerEncoder(nn.Module):
    """Pre-norm transformer over token ids with a pluggable 1D encoding; bidirectional, or causal (KV cache,
    ``generate``).

    Args:
        vocab_size: ids of the tokenizer.
        dim, depth, num_heads, mlp_ratio: width ``c``, blocks, heads, MLP hidden ratio.
        pe: the attention encoding (rotate / bias hooks), one module shared by every block: a module, None, or a
            spec that `zoo.pe.build` builds for this geometry (``dim``, ``head_dim``, ``num_heads``, ``causal``,
            ``max_len = max_seq_len``, ``depth``), e.g. ``"alibi"`` or ``{"name": "rope", "base": 5e5}``.  A spec
            must read 1D positions (`zoo.nn.fit.check_fit`: else `PEFitError` naming both kinds); one that is not
            ``causal_ok`` builds into a causal model with a warning and turns KV-cache decoding off
            (``kv_cache_ok``).  An encoding with only an ``embed`` hook (learned / sincos APE) is applied to the
            token embeddings (as ``embed_pe``); one with ``embed`` and attention hooks is applied at both places.
        embed_pe: an embedding-level encoding (``embed`` hook): a module, None, a spec (built like ``pe``), or a
            callable returning a module.  Specs and callables are built after ``tok_emb``, so seeded initialisation
            follows the layer order.
        embed_pe_name: the attribute (state-dict prefix) ``embed_pe`` is stored under.
        embed_positions: ``fn(pos, embed_pe) -> Positions`` that ``embed_pe`` reads (default: ``pos`` itself), e.g.
            `segment_intra_positions`; the body passes on the new tokens' part only.
        causal: causal mask, KV cache and ``generate``.
        num_classes: 0 = token logits (tied head); > 0 = sequence classification logits.
        pool: ``"cls"`` (first token; encoders' default), ``"mean"`` (over ``pos.mask``) or ``"last"`` (last real
            token; decoders' default).
        max_seq_len, allow_longer: inputs over ``max_seq_len`` keys (cached + new) raise unless ``allow_longer``
            (an attribute too).
        needs: the Positions fields the model reads (checked on every forward); default: what the encodings read
            (`zoo.nn.fit.needs_of`: a class's ``reads``, else ``ids``; ``embed_positions.reads`` for ``embed_pe``),
            ``()`` without an encoding.
        pe_kind: the encoding's name in error messages (default: its class name).
        attention: attention options (`zoo.nn.options`): ``window``, ``sinks``, ``block``, ``per_document`` (a mask
            on every layer), ``temperature`` and ``extension`` (built once per layer), e.g. ``{"window": 256,
            "sinks": 4}`` or ``{"extension": {"name": "self_extend", "group": 4, "window": 128}}``; None = plain.
            `set_attention` changes them on a built or loaded model.  Packed inputs (``Positions.doc_ids``) get the
            per-document mask without an option.
        init_std: normal init of linear and embedding weights; residual projections get ``init_std/sqrt(2*depth)``.

    Class attributes a preset sets: ``positions_hint`` (appended to a missing-positions error: how to build them),
    ``decoder_hint`` (appended where a causal model is needed: which names are decoders).
    """

    positions_hint: str = ""
    decoder_hint: str = ""

    def __init__(self, vocab_size: int, dim: int = 128, depth: int = 4, num_heads: int = 4, mlp_ratio: float = 4.0,
                 pe: Spec = None, embed_pe: Union[Spec, Callable[[], nn.Module]] = None,
                 embed_pe_name: str = "embed_pe",
                 embed_positions: Optional[Callable[[Positions, nn.Module], Positions]] = None,
                 causal: bool = False, num_classes: int = 0, pool: Optional[str] = None, max_seq_len: int = 1024,
                 allow_longer: bool = False, needs: Optional[tuple] = None, pe_kind: Optional[str] = None,
                 attention: Optional[Mapping] = None, qkv_bias: bool = True, drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 head_drop: float = 0.0, norm_eps: float = 1e-5, init_std: float = 0.02):
        super().__init__()
        check_positive_ints(vocab_size=vocab_size, dim=dim, depth=depth, num_heads=num_heads, max_seq_len=max_seq_len)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0 (0 = token logits), got {num_classes!r}")
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        pool = pool or ("last" if causal else "cls")
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        if causal and pool == "cls":
            raise ValueError("pool='cls' needs a bidirectional model: in a decoder the first token sees only itself; "
                             "use pool='last' or 'mean'")
        self.vocab_size, self.dim, self.depth, self.num_heads = vocab_size, dim, depth, num_heads
        self.causal, self.num_classes, self.pool = bool(causal), num_classes, pool
        self.max_seq_len, self.allow_longer = max_seq_len, bool(allow_longer)
        geometry = dict(dim=dim, head_dim=dim // num_heads, num_heads=num_heads, causal=self.causal,
                        max_len=max_seq_len, depth=depth)
        if pe_kind is None:
            pe_kind = pe if isinstance(pe, str) else pe.get("name") if isinstance(pe, Mapping) else \
                type(pe).__name__ if pe is not None else "none"
        self.pe_kind = pe_kind
        self.kv_cache_ok = True                     # False with an encoding that is not causal_ok (see make_cache)
        pe = self._build_encoding(pe, geometry)                                   # before tok_emb (seeded order)

        self.tok_emb = nn.Embedding(vocab_size, dim)
        embed_pe = embed_pe() if callable(embed_pe) and not isinstance(embed_pe, nn.Module) else \
            self._build_encoding(embed_pe, geometry)
        hooks = {h for h in ("has_embed", "has_rotate", "has_bias", "needs_weights") if getattr(pe, h, False)}
        if hooks == {"has_embed"}:
            if embed_pe is not None:                                              # an embedding-only encoding
                raise ValueError(f"pe={pe_kind!r} is an embedding-level encoding and the model already has one "
                                 f"({type(embed_pe).__name__})")
            embed_pe, pe = pe, None
        self._pe_embeds = "has_embed" in hooks and pe is not None                        # attention + embed hooks
        self._embed_pe_name, self._embed_positions = embed_pe_name, embed_positions
        if embed_pe is not None:
            setattr(self, embed_pe_name, embed_pe)
        if needs is None:                                                         # what the encodings read
            embed_needs = getattr(embed_positions, "reads", None) if embed_positions is not None else None
            needs = tuple(dict.fromkeys(needs_of(pe) + (tuple(embed_needs) if embed_needs is not None
                                                         else needs_of(embed_pe))))
        self.needs = tuple(needs)
        options = attention_options(attention)
        self.drop = nn.Dropout(drop)
        dpr = [drop_path * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList([
            Block(dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop=drop, attn_drop=attn_drop,
                  drop_path=dpr[i], pe=pe, causal=self.causal, norm_eps=norm_eps, layer_idx=i)
            for i in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.head = nn.Linear(dim, vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight                                    # tied
        self.head_drop = nn.Dropout(head_drop)
        self.classifier = nn.Linear(dim, num_classes) if num_classes > 0 else None
        init_decoder_weights(self, depth, init_std, skip=".pe.")                  # encodings keep their own init
        nn.init.normal_(self.tok_emb.weight, std=init_std)
        self.attention = AttentionOptions()
        self.set_attention(options)                                               # after init: no weights to touch

    def set_attention(self, attention: Optional[Mapping] = None) -> "TransformerEncoder":
        """Replace the attention options of every layer (see ``attention`` in the class docstring); None = plain
        attention.  Returns the model.  A learned temperature (``head``) starts from its ``init`` in every layer;
        everything else is parameter-free, so a trained model's weights stay valid."""
        options = attention_options(attention)
        if options.extension is not None and not self.kv_cache_ok:
            raise ConfigError(f"attention extension {options.extension['name']!r}: the encoding {self.pe_kind!r} "
                              f"is not causal_ok")
        for blk in self.blocks:
            attn = blk.attn
            attn.set_extension(None)
            attn.mask = options.mask
            attn.temperature = options.temperature_for(self.num_heads)
            attn.set_extension(options.extension_for())
        self.attention = options
        config = getattr(self, "config", None)                                   # a preset's rebuild keywords
        if isinstance(config, dict):
            config.pop("attention", None)
            if not options.empty:
                config["attention"] = options.to_dict()
        return self

    @property
    def embed_pe(self) -> Optional[nn.Module]:
        """The embedding-level encoding (stored under ``embed_pe_name``), or None."""
        return self._modules.get(self._embed_pe_name)

    #: the positions kinds (`zoo.pe.info(name).positions`) this body provides to its encodings
    pe_positions: tuple = ("1d",)

    def _build_encoding(self, spec, geometry: dict) -> Optional[nn.Module]:
        """A module or None as given; a spec checked against the model (`zoo.nn.fit.check_fit`) and built for
        its geometry.  An encoding that is not ``causal_ok`` turns ``kv_cache_ok`` off."""
        if spec is None or isinstance(spec, nn.Module) or callable(spec):
            return spec
        meta = check_fit(spec, model=type(self).__name__, positions=self.pe_positions, causal=self.causal)
        self.kv_cache_ok = self.kv_cache_ok and (meta.causal_ok or not self.causal)
        return _build(spec, geometry)

    # ---- positions (a preset overrides these) -----------------------------------------------------------------
    def default_positions(self, input_ids: Tensor, past: int = 0) -> Positions:
        """Positions of ``past`` cached + the ``n`` tokens of ``input_ids`` when none are given: token indices."""
        b, n = input_ids.shape
        return Positions(ids=torch.arange(past + n, device=input_ids.device).expand(b, past + n))

    def next_positions(self, tokens: Tensor, pos: Positions) -> Positions:
        """Positions of ``tokens [b, m + k]`` during `generate`, given ``pos`` of the first ``m``."""
        return self.default_positions(tokens)

    # ---- forward ----------------------------------------------------------------------------------------------
    def make_cache(self, window: Optional[int] = None, sinks: int = 4) -> List[KVCache]:
        """An empty KV cache (causal models): one `KVCache` per block; with ``window``, a bounded
        `StreamingKVCache` per block (the first ``sinks`` tokens and the last ``window`` stay)."""
        if not self.causal:
            raise ValueError(f"a KV cache needs a causal model{self.decoder_hint}; an encoder's earlier outputs "
                             f"change with every new token")
        if not self.kv_cache_ok:
            raise ValueError(f"{type(self).__name__}(pe={self.pe_kind!r}): the encoding is not causal_ok (zoo.pe.info"
                             f"(name).causal_ok: its keys change as the sequence grows), so KV-cache decoding would "
                             f"not give the full forward's outputs; use generate(use_cache=False) or forward on the "
                             f"whole sequence")
        if window is not None:
            return [StreamingKVCache(window, sinks) for _ in self.blocks]
        return [KVCache() for _ in self.blocks]

    init_cache = make_cache

    def _check_cache(self, cache) -> None:
        if not self.causal:
            raise ValueError(f"cache= needs a causal model{self.decoder_hint}")
        if not isinstance(cache, (list, tuple)) or len(cache) != self.depth \
                or not all(isinstance(c, KVCache) for c in cache):
            raise ValueError(f"cache must be a list of {self.depth} KVCache (model.make_cache()), got "
                             f"{type(cache).__name__} of length {len(cache) if hasattr(cache, '__len__') else '?'}")

    def forward_features(self, input_ids: Tensor, pos: Optional[Positions] = None,
                         cache: Optional[List[KVCache]] = None, *, check_ids: bool = True) -> Tensor:
        """Normed hidden states ``[b, n, c]``.  With ``cache`` (causal models), ``input_ids`` are the new tokens
        only, ``pos`` describes all tokens (cached + new) and every layer's cache is extended.  ``input_ids`` must
        hold at least one token, each in ``0 .. vocab_size - 1``: checked unless ``check_ids=False`` (the range
        check reads a flag back from the device; `generate` skips it for the tokens it sampled itself)."""
        check_input_ids(input_ids, self.vocab_size if check_ids else None)
        if cache is not None:
            self._check_cache(cache)
        b, n = input_ids.shape
        past = cache[0].length if cache is not None else 0
        nk = past + n
        note = " (BiPE's intra-segment positions clip at max_intra - 1)" \
            if self._embed_positions is segment_intra_positions else ""
        held = cache[0].size if cache is not None else 0                          # a streaming cache holds fewer
        check_seq_len(n, held, self.max_seq_len, self.allow_longer, note)
        if pos is None:
            pos = self.default_positions(input_ids, past)
        check_positions(pos, self.needs, b, nk, past, f"{type(self).__name__}(pe={self.pe_kind!r})",
                        self.positions_hint)
        x = self.tok_emb(input_ids)                                               # [b, n, c]
        embed_pe = self.embed_pe
        if embed_pe is not None:
            epos = pos if self._embed_positions is None else self._embed_positions(pos, embed_pe)
            x = embed_pe.embed(x, epos.tail(n) if past else epos)                 # the new tokens' positions
        if self._pe_embeds:
            x = self.blocks[0].attn.pe.embed(x, pos.tail(n) if past else pos)
        x = self.drop(x)
        with shared_encodings(self.blocks, pos):                                # one bias per forward
            for i, blk in enumerate(self.blocks):
                x = blk(x, pos, None if cache is None else cache[i])
        return self.norm(x)

    def token_logits(self, x: Tensor) -> Tensor:
        """Tied-head logits ``[b, n, vocab]`` from `forward_features`."""
        return self.head(x)

    def pool_features(self, x: Tensor, pos: Optional[Positions] = None) -> Tensor:
        """``[b, n, c] -> [b, c]`` by ``self.pool``; ``mean`` and ``last`` respect ``pos.mask``."""
        mask = pos.mask if pos is not None and pos.mask is not None else None
        if self.pool == "cls":
            return x[:, 0]
        if mask is None:
            return x.mean(1) if self.pool == "mean" else x[:, -1]
        m = mask.to(device=x.device, dtype=torch.bool).expand(x.shape[:2])
        if self.pool == "mean":
            w = m.to(x.dtype).unsqueeze(-1)                                       # [b, n, 1]
            return (x * w).sum(1) / w.sum(1).clamp_min(1.0)
        last = m.long().cumsum(-1).argmax(-1)                                     # [b] index of the last True
        return x[torch.arange(x.shape[0], device=x.device), last]

    def forward_head(self, x: Tensor, pos: Optional[Positions] = None) -> Tensor:
        """Class logits ``[b, num_classes]`` from `forward_features`."""
        if self.classifier is None:
            raise ValueError("this model has no classifier (num_classes=0); build it with num_classes=K")
        return self.classifier(self.head_drop(self.pool_features(x, pos)))

    def forward(self, input_ids: Tensor, pos: Optional[Positions] = None,
                cache: Optional[List[KVCache]] = None, *, check_ids: bool = True) -> Tensor:
        """Token logits ``[b, n, vocab]`` (``num_classes == 0``) or class logits ``[b, num_classes]``."""
        x = self.forward_features(input_ids, pos, cache, check_ids=check_ids)
        return self.token_logits(x) if self.classifier is None else self.forward_head(x, pos)

    # ---- generation (causal models) ---------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, input_ids: Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: Optional[int] = None,
                 use_cache: bool = True, generator: Optional[torch.Generator] = None,
                 pos_fn: Optional[Callable[[Tensor, Positions], Positions]] = None,
                 pos: Optional[Positions] = None, window: Optional[int] = None, sinks: int = 4) -> Tensor:
        """Append ``max_new_tokens`` sampled tokens to ``input_ids`` ``[b, n]``; returns ``[b, n + max_new_tokens]``.

        Args:
            temperature: 0 = greedy (argmax); else sample from ``softmax(logits / temperature)``.
            top_k: sample among the ``top_k`` most likely tokens only.
            use_cache: decode one token at a time with a KV cache (else re-run the whole sequence each step).
            window, sinks: streaming generation (StreamingLLM): the KV cache keeps the first ``sinks`` tokens and the
                last ``window`` ones (`StreamingKVCache`), so memory stays flat over any number of new tokens; the
                same tokens as the full cache while ``prompt + new <= sinks + window``.  Needs ``use_cache``.
            generator: a ``torch.Generator`` for reproducible sampling.
            pos_fn: ``pos_fn(tokens [b, m + k], pos of the first m) -> Positions of all m + k``; default
                `next_positions`.
            pos: Positions of the prompt (default: `default_positions`).

        The model mode is left as it is (call ``eval()`` to turn dropout off)."""
        if not self.causal:
            raise ValueError(f"generate() needs a causal model{self.decoder_hint}, this is an encoder")
        check_generate_args(max_new_tokens, temperature, top_k)
        if self.classifier is not None:
            raise ValueError("generate() needs token logits: build the decoder with num_classes=0")
        check_prompt(input_ids, self.vocab_size)
        if pos is None:
            pos = self.default_positions(input_ids)
        def step(ids: Tensor, p: Positions, cache: Optional[List[KVCache]]) -> Tensor:
            # the prompt was checked above; every later id is sampled from this model's own vocabulary
            return self(ids, p, cache, check_ids=False)

        if window is not None and not use_cache:
            raise ValueError("window= (streaming generation) needs use_cache=True")
        return decode(step, input_ids, pos, pos_fn or self.next_positions, max_new_tokens, temperature, top_k,
                      self.make_cache(window, sinks) if use_cache else None, generator)


class DecoderLM(TransformerEncoder):
    """`TransformerEncoder` fixed to causal: a pre-norm decoder LM with a tied head, a KV cache and ``generate``.
    Takes every argument of the encoder but ``causal``."""

    def __init__(self, vocab_size: int, **kwargs):
        if "causal" in kwargs:
            raise ValueError(f"causal= is fixed: {type(self).__name__} is a decoder")
        super().__init__(vocab_size, causal=True, **kwargs)
