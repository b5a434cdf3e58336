"""Document encoders over words + boxes, one per layout encoding.

    input_ids [b, n], boxes [b, n, 4] (0..1000), mask [b, n]
      layoutlm   : word + pos1d + type + LayoutLM 2D tables   -> LayerNorm -> post-norm BERT blocks
      layoutlmv3 : word + RoBERTa pos1d + type + cat(2D)       -> LayerNorm -> post-norm blocks, spatial bias
      bros       : word + pos1d + type                          -> LayerNorm -> post-norm blocks, BROS crel on q
      graph_rope : word + LayoutLM 2D tables -> LayerNorm -> ROPE graph layers (k-NN word graph, reading order)
      v2pe       : [patch tokens] + [word tokens] -> pre-norm blocks with RoPE at V2PE float positions
    -> hidden [b, n, c]  (or per-token logits with ``num_classes``)

Parity: `DocEncoder` in the ``layoutlm`` / ``layoutlmv3`` / ``bros`` configurations loads the state dicts of HF
transformers' ``LayoutLMModel``, ``LayoutLMv3Model`` (text part) and ``BrosModel`` through `hf_to_zoo` (explicit key
map, every shape asserted) and gives their ``last_hidden_state`` (tests/documents/test_doc_models.py).  HF's layers
are post-norm BERT layers with separate q/k/v; `PostNormBlock` keeps that order but runs zoo's `Attention` (fused
``qkv`` = cat(query, key, value), ``proj`` = attention.output.dense) with the encoding on its hooks.

Bodies.  These encoders do not use `zoo.nn.TransformerEncoder` (the shared pre-norm body of the code and DNA
models): ``layoutlm`` / ``layoutlmv3`` / ``bros`` are post-norm BERT layers (the HF checkpoints they load are), the
graph encoder has no attention blocks, and `DocV2PEEncoder`, pre-norm, puts image patch tokens between the
embedding and the blocks, reads float V2PE positions and keeps timm's default init with ``head`` as its per-token
classifier (a checkpoint key the body uses for its tied LM head); it runs zoo `Block` s directly.

The attention encoding (LayoutLMv3 bias, BROS box memory) is one module owned by the encoder (``rel``) and shared by
every block; blocks hold it as an unregistered attribute, so the state dict has one copy of its weights.  The model
opens ``rel.shared()`` around the blocks, so the ``[b, H, n, n]`` bias / ``[b, n, n, D]`` BROS memory is computed
once per forward.

Inputs: ``input_ids`` a non-empty int ``[b, n]`` tensor of ids below ``vocab_size``; boxes in 0..1000 (float boxes
all within 0..1, HF BROS's page-normalised convention, are refused, not rounded); anything else is a ValueError
naming the argument.  BROS takes the same 0..1000 boxes and scales them by ``bbox_scale / 1000`` (HF BROS expects
0..1 boxes times ``bbox_scale``).
"""
from __future__ import annotations

import re
from typing import Dict, Mapping, Optional, Union

import torch
from torch import Tensor, nn

from zoo.nn import Block, Mlp
from zoo.nn.attention import Attention
from zoo.nn.fit import check_fit, register_family
from zoo.nn.generation import check_input_ids
from zoo.nn.transformer import spec_label
from zoo.pe import build as build_pe
from zoo.pe.bros import BrosRelativeBias
from zoo.pe.layout import (LayoutLM2DEmbedding, LayoutLMv3SpatialBias, LayoutLMv3SpatialEmbedding, check_boxes,
                           roberta_position_ids)
from zoo.pe.reading_order import (adjacency_to_neighbors, beta_skeleton_graph, box_centers, knn_graph,
                                  reading_order_codes, ReadingOrderGraphConv)
from zoo.pe.v2pe import V2PE, v2pe_position_ids
from zoo.positions import Positions
from zoo.registry import register_model

__all__ = ["PostNormBlock", "DocEncoder", "DocGraphRopeEncoder", "DocV2PEEncoder", "EntityLinkingHead", "hf_to_zoo",
           "checkpoint_filter_fn", "KINDS"]

KINDS = ("layoutlm", "layoutlmv3", "bros")
PAPERS = {"layoutlm": "https://arxiv.org/abs/1912.13318", "layoutlmv3": "https://arxiv.org/abs/2204.08387",
          "bros": "https://arxiv.org/abs/2108.04539", "graph_rope": "https://arxiv.org/abs/2106.10786",
          "v2pe": "https://arxiv.org/abs/2412.09616"}


def _check_index(t, name: str, b: int, n: int) -> None:
    if not isinstance(t, Tensor) or t.is_floating_point() or t.dtype == torch.bool or t.is_complex() \
            or tuple(t.shape) not in ((b, n), (n,)):
        raise ValueError(f"{name} must be an int [b, n] = [{b}, {n}] tensor, got "
                         f"{tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__}")


def _check_mask(mask, b: int, n: int) -> Optional[Tensor]:
    if mask is None:
        return None
    if not isinstance(mask, Tensor) or tuple(mask.shape) != (b, n):
        raise ValueError(f"mask must be [b, n] = [{b}, {n}], got "
                         f"{tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__}")
    return mask.bool()


def _check_doc_boxes(boxes, b: int, n: int) -> Tensor:
    if boxes is None:
        raise ValueError("boxes [b, n, 4] (0..1000) are required")
    bx = check_boxes(boxes)
    if bx.ndim != 3 or tuple(bx.shape[:2]) != (b, n):
        raise ValueError(f"boxes must be [b, n, 4] = [{b}, {n}, 4], got {tuple(boxes.shape)}")
    return bx


class EntityLinkingHead(nn.Module):
    """Pairwise link scores between form entities (FUNSD "linking", e.g. question -> answer).

    Entity features are the mean of their words' features; entity ``i`` -> ``j`` scores
    ``mlp(src(e_i) + dst(e_j) + geo(g_ij)) + <src(e_i), dst(e_j)> / sqrt(hidden)`` (an additive MLP plus a bilinear
    term), where ``g_ij`` is the relative geometry of the two entity boxes (centre offsets and edge gaps)::

        hidden [b, n, c], word_entity [b, n] (-1 = none), entity_boxes [b, e, 4] -> logits [b, e, e]
    """

    def __init__(self, dim: int, hidden: int = 128):
        super().__init__()
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden <= 0:
            raise ValueError(f"link_dim must be a positive int, got {hidden!r}")
        self.hidden = hidden
        self.src = nn.Linear(dim, hidden)
        self.dst = nn.Linear(dim, hidden)
        self.geo = nn.Linear(6, hidden)
        self.out = nn.Sequential(nn.GELU(), nn.Linear(hidden, 1))

    @staticmethod
    def pool(x: Tensor, word_entity: Tensor, num_entities: int) -> Tensor:
        """Mean of the word features of each entity: ``[b, n, c]``, ``[b, n]`` -> ``[b, e, c]``."""
        b, n, c = x.shape
        valid = word_entity >= 0
        idx = word_entity.clamp_min(0)                                            # [b, n]
        onehot = torch.zeros(b, n, num_entities, dtype=x.dtype, device=x.device)
        onehot.scatter_(2, idx.unsqueeze(-1), valid.unsqueeze(-1).to(x.dtype))   # [b, n, e]
        total = onehot.transpose(1, 2) @ x                                        # [b, e, c]
        return total / onehot.sum(1).clamp_min(1).unsqueeze(-1)

    @staticmethod
    def geometry(boxes: Tensor) -> Tensor:
        """``[b, e, 4]`` boxes (0..1000) -> ``[b, e, e, 6]``: centre offsets dx, dy, their magnitudes |dx|, |dy|, and
        the gaps x0_j - x1_i, y0_j - y1_i, in units of 100 (a tenth of the page), so a row's height is ~0.1-0.5."""
        bx = boxes.float() / 100.0
        cx, cy = (bx[..., 0] + bx[..., 2]) / 2, (bx[..., 1] + bx[..., 3]) / 2               # [b, e]
        dx, dy = cx[:, None, :] - cx[:, :, None], cy[:, None, :] - cy[:, :, None]           # [b, e(i), e(j)]
        feats = [dx, dy, dx.abs(), dy.abs(), bx[..., 0][:, None, :] - bx[..., 2][:, :, None],
                 bx[..., 1][:, None, :] - bx[..., 3][:, :, None]]
        return torch.stack(feats, dim=-1)                                         # [b, e(i), e(j), 6]

    def forward(self, x: Tensor, word_entity: Tensor, entity_boxes: Tensor) -> Tensor:
        e = entity_boxes.shape[1]
        ent = self.pool(x, word_entity.to(x.device), e)                          # [b, e, c]
        s, d = self.src(ent), self.dst(ent)                                       # [b, e, h]
        geo = self.geo(self.geometry(entity_boxes.to(x.device)).to(x.dtype))      # [b, e, e, h]
        pair = self.out(s[:, :, None, :] + d[:, None, :, :] + geo).squeeze(-1)    # [b, e, e]
        return pair + (s @ d.transpose(1, 2)) / self.hidden ** 0.5


class PostNormBlock(nn.Module):
    """BERT layer (post-norm) on zoo's `Attention`: ``x = norm1(x + attn(x)); x = norm2(x + mlp(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, pe: Optional[nn.Module] = None, drop: float = 0.0,
                 attn_drop: float = 0.0, norm_eps: float = 1e-12):
        super().__init__()
        self.attn = Attention(dim, num_heads, qkv_bias=True, attn_drop=attn_drop, proj_drop=drop)
        if pe is not None:
            self.attn.__dict__["pe"] = pe            # shared, owned (and saved) by the encoder
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, mlp_hidden, act_layer=nn.GELU, drop=drop)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)

    def forward(self, x: Tensor, pos: Optional[Positions] = None) -> Tensor:
        x = self.norm1(x + self.attn(x, pos))
        return self.norm2(x + self.mlp(x))


class DocEncoder(nn.Module):
    """LayoutLM / LayoutLMv3 (text) / BROS encoder (see the module docstring).

    Args:
        kind: ``"layoutlm" | "layoutlmv3" | "bros"``.
        vocab_size, dim, depth, num_heads, mlp_hidden: BERT sizes.
        max_positions: rows of the 1D table (512; LayoutLMv3 514 because its positions start at 2).
        type_vocab_size: token types (2); pad_token_id: 0 (BERT vocab) or 1 (RoBERTa vocab, LayoutLMv3).
        max_2d_positions: rows of the 2D tables (1024).
        coordinate_size, shape_size: LayoutLMv3 widths, ``4 * coordinate + 2 * shape == dim`` (default dim / 6).
        rel_pos_bins, max_rel_pos, rel_2d_pos_bins, max_rel_2d_pos: LayoutLMv3 buckets (32, 128, 64, 256).
        bbox_scale: BROS (100).
        num_classes: add a per-token linear head (``head``) and return logits.
        link_dim: add an `EntityLinkingHead` of this width (``link_head``; the task calls it on the features).
        pe: any box encoding of `zoo.pe` instead of the kind's layout encoding: a registered name or ``{"name":
            ..., **kwargs}`` built for this geometry.  An embedding encoding (``layoutlm_2d``,
            ``layoutlmv3_spatial``) becomes ``layout``, an attention one (``bros``, ``layoutlmv3_bias``) ``rel``,
            shared by every block; the kind's 1D table and blocks stay.  Other positions kinds raise
            `zoo.nn.fit.PEFitError` naming both kinds.
    """

    pe_positions = ("boxes",)                   # the positions kinds this model gives its encodings

    def __init__(self, kind: str = "layoutlm", vocab_size: int = 30522, dim: int = 768, depth: int = 12,
                 num_heads: int = 12, mlp_hidden: Optional[int] = None, max_positions: Optional[int] = None,
                 type_vocab_size: int = 2, pad_token_id: Optional[int] = None, max_2d_positions: int = 1024,
                 coordinate_size: Optional[int] = None, shape_size: Optional[int] = None, rel_pos_bins: int = 32,
                 max_rel_pos: int = 128, rel_2d_pos_bins: int = 64, max_rel_2d_pos: int = 256,
                 bbox_scale: float = 100.0, norm_eps: Optional[float] = None, drop: float = 0.1,
                 attn_drop: float = 0.1, num_classes: Optional[int] = None, link_dim: Optional[int] = None,
                 init_std: float = 0.02, pe: Union[None, str, Mapping] = None):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        for name, v in (("vocab_size", vocab_size), ("dim", dim), ("depth", depth), ("num_heads", num_heads)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        v3 = kind == "layoutlmv3"
        self.kind, self.dim, self.depth, self.num_heads = kind, dim, depth, num_heads
        self.pad_token_id = (1 if v3 else 0) if pad_token_id is None else pad_token_id
        max_positions = (514 if v3 else 512) if max_positions is None else max_positions
        norm_eps = (1e-5 if v3 else 1e-12) if norm_eps is None else norm_eps
        self.max_positions = max_positions
        self.embeddings = nn.Module()
        self.embeddings.word_embeddings = nn.Embedding(vocab_size, dim)
        self.embeddings.position_embeddings = nn.Embedding(max_positions, dim)
        self.embeddings.token_type_embeddings = nn.Embedding(type_vocab_size, dim)
        self.embeddings.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.emb_drop = nn.Dropout(drop)
        self.pe_kind = kind if pe is None else spec_label(pe)
        if pe is not None:
            check_fit(pe, model=type(self).__name__, positions=self.pe_positions, causal=False)
            enc = build_pe(pe, dim=dim, head_dim=dim // num_heads, num_heads=num_heads, causal=False,
                           max_len=max_positions, depth=depth)
            attention = enc.has_rotate or enc.has_bias or enc.needs_weights
            self.layout, self.rel = (None, enc) if attention else (enc, None)
        elif kind == "layoutlm":
            self.layout = LayoutLM2DEmbedding(dim, max_2d_positions, init_std)
            self.rel = None
        elif v3:
            if coordinate_size is None and shape_size is None:
                if dim % 6:
                    raise ValueError(f"layoutlmv3 needs coordinate_size/shape_size when dim ({dim}) is not a "
                                     f"multiple of 6")
                coordinate_size = shape_size = dim // 6
            if coordinate_size is None or shape_size is None or 4 * coordinate_size + 2 * shape_size != dim:
                raise ValueError(f"4 * coordinate_size + 2 * shape_size must equal dim={dim}, got "
                                 f"coordinate_size={coordinate_size}, shape_size={shape_size}")
            self.layout = LayoutLMv3SpatialEmbedding(coordinate_size, shape_size, max_2d_positions, init_std)
            self.rel = LayoutLMv3SpatialBias(num_heads, rel_pos_bins, max_rel_pos, rel_2d_pos_bins, max_rel_2d_pos)
        else:
            self.layout = None
            self.rel = BrosRelativeBias(dim, dim // num_heads, bbox_scale=bbox_scale)
        hidden = 4 * dim if mlp_hidden is None else mlp_hidden
        self.blocks = nn.ModuleList([PostNormBlock(dim, num_heads, hidden, self.rel, drop, attn_drop, norm_eps)
                                     for _ in range(depth)])
        self.head = nn.Linear(dim, num_classes) if num_classes else None
        self.link_head = EntityLinkingHead(dim, link_dim) if link_dim else None
        self._init_weights(init_std)

    def _init_weights(self, std: float) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=std)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, input_ids: Tensor, boxes: Optional[Tensor] = None, mask: Optional[Tensor] = None,
                token_type_ids: Optional[Tensor] = None, position_ids: Optional[Tensor] = None,
                pos: Optional[Positions] = None) -> Tensor:
        """``input_ids [b, n]``, ``boxes [b, n, 4]`` (0..1000), ``mask [b, n]`` (True = real token) -> ``[b, n, c]``.

        ``pos`` may carry ``boxes`` / ``mask`` instead.  ``position_ids`` overrides the 1D embedding positions
        (default ``0..n-1``; LayoutLMv3: RoBERTa positions from ``input_ids``)."""
        check_input_ids(input_ids, self.embeddings.word_embeddings.num_embeddings)
        b, n = input_ids.shape
        if pos is not None:
            boxes = pos.boxes if boxes is None else boxes
            mask = pos.mask if mask is None else mask
        bx = _check_doc_boxes(boxes, b, n).to(input_ids.device)
        mask = _check_mask(mask, b, n)
        if position_ids is None:
            position_ids = roberta_position_ids(input_ids, self.pad_token_id) if self.kind == "layoutlmv3" else \
                torch.arange(n, device=input_ids.device).expand(b, n)
        else:
            _check_index(position_ids, "position_ids", b, n)
        if int(position_ids.min()) < 0:
            raise ValueError(f"position_ids holds {int(position_ids.min())}; 1D positions start at 0")
        if int(position_ids.max()) >= self.max_positions:
            raise ValueError(f"{n} tokens need 1D positions up to {int(position_ids.max())}, but the table has "
                             f"{self.max_positions} rows (max_positions)")
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        else:
            _check_index(token_type_ids, "token_type_ids", b, n)
            types = self.embeddings.token_type_embeddings.num_embeddings
            lo, hi = int(token_type_ids.min()), int(token_type_ids.max())
            if lo < 0 or hi >= types:
                raise ValueError(f"token_type_ids holds {lo if lo < 0 else hi}, outside 0..{types - 1} "
                                 f"(type_vocab_size={types})")
        e = self.embeddings
        x = e.word_embeddings(input_ids) + e.position_embeddings(position_ids) + e.token_type_embeddings(token_type_ids)
        apos = Positions(ids=torch.arange(n, device=input_ids.device).expand(b, n), boxes=bx, mask=mask)
        if self.layout is not None:
            x = self.layout.embed(x, apos)
        x = self.emb_drop(e.norm(x))
        if self.rel is None:
            for blk in self.blocks:
                x = blk(x, apos)
        else:
            with self.rel.shared(apos):
                for blk in self.blocks:
                    x = blk(x, apos)
        return x if self.head is None else self.head(x)


register_family("document encoder", positions=DocEncoder.pe_positions, causal=False,
                models="doc_layoutlm_*, doc_layoutlmv3_*, doc_bros_*",
                note="embed hooks replace the layout embedding, attention hooks the shared bias (every block)")


# ---- HF key maps ------------------------------------------------------------------------------------------------

_PREFIXES = ("layoutlmv3.", "layoutlm.", "bros.")


def _hf_key_map(kind: str, depth: int, sd_keys) -> Dict[str, str]:
    """zoo key -> HF key (q/k/v handled separately)."""
    m = {"embeddings.word_embeddings.weight": "embeddings.word_embeddings.weight",
         "embeddings.position_embeddings.weight": "embeddings.position_embeddings.weight",
         "embeddings.token_type_embeddings.weight": "embeddings.token_type_embeddings.weight",
         "embeddings.norm.weight": "embeddings.LayerNorm.weight", "embeddings.norm.bias": "embeddings.LayerNorm.bias"}
    if kind in ("layoutlm", "layoutlmv3"):
        for t in "xyhw":
            m[f"layout.{t}_position_embeddings.weight"] = f"embeddings.{t}_position_embeddings.weight"
    if kind == "layoutlmv3":
        for t in ("rel_pos_bias", "rel_pos_x_bias", "rel_pos_y_bias"):
            if f"encoder.{t}.weight" in sd_keys:
                m[f"rel.{t}.weight"] = f"encoder.{t}.weight"
    if kind == "bros":
        m["rel.bbox_projection.weight"] = "bbox_embeddings.bbox_projection.weight"
    for i in range(depth):
        h, z = f"encoder.layer.{i}.", f"blocks.{i}."
        for p in ("weight", "bias"):
            m[z + f"attn.proj.{p}"] = h + f"attention.output.dense.{p}"
            m[z + f"norm1.{p}"] = h + f"attention.output.LayerNorm.{p}"
            m[z + f"mlp.fc1.{p}"] = h + f"intermediate.dense.{p}"
            m[z + f"mlp.fc2.{p}"] = h + f"output.dense.{p}"
            m[z + f"norm2.{p}"] = h + f"output.LayerNorm.{p}"
    return m


# HF keys that carry nothing we need: pooler, fixed buffers (checked), visual branch absent in text-only use
_DROP = re.compile(r"^(pooler\.|embeddings\.position_ids$|embeddings\.token_type_ids$|"
                   r"bbox_embeddings\.bbox_sinusoid_emb\.)")


def hf_to_zoo(state_dict: Dict[str, Tensor], model: "DocEncoder") -> Dict[str, Tensor]:
    """Convert an HF ``LayoutLMModel`` / ``LayoutLMv3Model`` (text part) / ``BrosModel`` state dict to ``model``'s
    keys.  Every shape is asserted; unknown HF keys raise (the pooler and fixed buffers are dropped)."""
    sd = {}
    for k, v in state_dict.items():
        for p in _PREFIXES:
            if k.startswith(p):
                k = k[len(p):]
                break
        sd[k] = v
    own = model.state_dict()
    kmap = _hf_key_map(model.kind, model.depth, sd)
    out, used = {}, set()
    for zk, hk in kmap.items():
        if hk not in sd:
            raise ValueError(f"HF state dict lacks {hk!r} (for {zk!r}); is it a {model.kind} checkpoint with "
                             f"{model.depth} layers?")
        v = sd[hk]
        if tuple(v.shape) != tuple(own[zk].shape):
            raise ValueError(f"shape mismatch: HF {hk} {tuple(v.shape)} vs zoo {zk} {tuple(own[zk].shape)}")
        out[zk], used = v, used | {hk}
    for i in range(model.depth):
        h = f"encoder.layer.{i}.attention.self."
        for p in ("weight", "bias"):
            parts = [sd[h + f"{t}.{p}"] for t in ("query", "key", "value")]
            v = torch.cat(parts, dim=0)                                          # [3 * c, ...] q | k | v
            zk = f"blocks.{i}.attn.qkv.{p}"
            if tuple(v.shape) != tuple(own[zk].shape):
                raise ValueError(f"shape mismatch: HF {h}query/key/value.{p} -> {tuple(v.shape)} vs zoo {zk} "
                                 f"{tuple(own[zk].shape)}")
            out[zk] = v
            used |= {h + f"{t}.{p}" for t in ("query", "key", "value")}
    extra = [k for k in sd if k not in used and not _DROP.match(k)]
    if extra:
        raise ValueError(f"HF state dict has keys this {model.kind} encoder does not know: {extra[:8]}"
                         + (" (text-only: build the HF model with visual_embed=False)" if model.kind == "layoutlmv3"
                            else ""))
    for k in own:                                    # task heads are not in HF checkpoints: keep their init
        if k.startswith(("head.", "link_head.")):
            out[k] = own[k]
    missing = set(own) - set(out)
    if missing:
        raise ValueError(f"no HF weights for {sorted(missing)[:8]}")
    return out


def checkpoint_filter_fn(state_dict: Dict[str, Tensor], model: nn.Module) -> Dict[str, Tensor]:
    """HF layouts (``encoder.layer.*``) go through `hf_to_zoo`; our own state dicts pass unchanged."""
    if isinstance(model, DocEncoder) and any(".attention.self.query." in k for k in state_dict):
        return hf_to_zoo(state_dict, model)
    return state_dict


# ---- reading-order graph encoder ----------------------------------------------------------------------------------

class DocGraphRopeEncoder(nn.Module):
    """Word-graph encoder with ROPE codes (Lee et al., ACL 2021): word + LayoutLM 2D embedding -> LayerNorm ->
    ``depth`` `ReadingOrderGraphConv` layers over one word graph (k-NN of box centres, or the beta-skeleton when
    ``graph="beta_skeleton"``), built once per forward; codes from the reading order (``order``, default the token
    index, i.e. the OCR serialisation).

    Args:
        vocab_size, dim, depth: sizes; code_dim: width of the sinusoidal code embedding.
        graph: ``"knn"`` (``k`` neighbours) or ``"beta_skeleton"`` (``beta``).
        num_classes: per-token head (word labelling); link_dim: an `EntityLinkingHead` (``link_head``).
    """

    def __init__(self, vocab_size: int = 30522, dim: int = 256, depth: int = 4, code_dim: int = 64,
                 graph: str = "knn", k: int = 8, beta: float = 1.0, max_2d_positions: int = 1024,
                 num_classes: Optional[int] = None, link_dim: Optional[int] = None, norm_eps: float = 1e-5,
                 init_std: float = 0.02):
        super().__init__()
        if graph not in ("knn", "beta_skeleton"):
            raise ValueError(f"graph must be 'knn' or 'beta_skeleton', got {graph!r}")
        for name, v in (("vocab_size", vocab_size), ("dim", dim), ("depth", depth), ("k", k)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.graph_kind, self.k, self.beta, self.depth = graph, k, beta, depth
        self.tok_emb = nn.Embedding(vocab_size, dim)
        self.layout = LayoutLM2DEmbedding(dim, max_2d_positions, init_std)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.layers = nn.ModuleList([ReadingOrderGraphConv(dim, code_dim, norm_eps=norm_eps) for _ in range(depth)])
        self.head = nn.Linear(dim, num_classes) if num_classes else None
        self.link_head = EntityLinkingHead(dim, link_dim) if link_dim else None
        nn.init.normal_(self.tok_emb.weight, std=init_std)

    def graph(self, boxes: Tensor, mask: Optional[Tensor] = None, order: Optional[Tensor] = None):
        """``idx, valid, codes`` ``[b, n, K]`` of the word graph."""
        centers = box_centers(boxes)
        if self.graph_kind == "knn":
            idx, valid = knn_graph(centers, self.k, mask)
        else:
            idx, valid = adjacency_to_neighbors(beta_skeleton_graph(centers, self.beta, mask))
        b, n = centers.shape[:2]
        order = torch.arange(n, device=idx.device) if order is None else order
        return idx, valid, reading_order_codes(order, idx, valid)

    def forward(self, input_ids: Tensor, boxes: Optional[Tensor] = None, mask: Optional[Tensor] = None,
                order: Optional[Tensor] = None, pos: Optional[Positions] = None) -> Tensor:
        """``input_ids [b, n]``, ``boxes [b, n, 4]``, ``mask [b, n]``, ``order [b, n]`` (reading order; ``pos.ids``
        when ``pos`` is given) -> ``[b, n, c]``."""
        check_input_ids(input_ids, self.tok_emb.num_embeddings)
        b, n = input_ids.shape
        if pos is not None:
            boxes = pos.boxes if boxes is None else boxes
            mask = pos.mask if mask is None else mask
            order = pos.ids if order is None else order
        bx = _check_doc_boxes(boxes, b, n).to(input_ids.device)
        mask = _check_mask(mask, b, n)
        idx, valid, codes = self.graph(bx, mask, order)
        x = self.norm(self.layout.embed(self.tok_emb(input_ids), Positions(boxes=bx)))
        for layer in self.layers:
            x = layer(x, idx, valid, codes)
        return x if self.head is None else self.head(x)


# ---- V2PE encoder -------------------------------------------------------------------------------------------------

class DocV2PEEncoder(nn.Module):
    """Page encoder with V2PE positions: ``[image patch tokens] + [word tokens]``, pre-norm zoo `Block`\\ s with RoPE
    at float positions (`v2pe_position_ids`).  Patches (``[b, P, patch_dim]`` features, ``P`` = tiles x
    ``num_image_token``) are optional; words carry word + LayoutLM 2D embeddings.  Returns the word tokens' features.

    ``stride``: the visual stride at evaluation (64, the official eval example); in training mode with
    ``train_stride="random"`` it is drawn per image from {1, ..., 256} (``generator`` for reproducibility).
    """

    def __init__(self, vocab_size: int = 30522, dim: int = 256, depth: int = 4, num_heads: int = 4,
                 mlp_ratio: float = 4.0, patch_dim: Optional[int] = None, num_image_token: int = 256,
                 stride: float = 64, train_stride="random", max_2d_positions: int = 1024, rope_base: float = 10000.0,
                 num_classes: Optional[int] = None, link_dim: Optional[int] = None, drop: float = 0.0,
                 norm_eps: float = 1e-6, init_std: float = 0.02):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.num_image_token, self.stride, self.train_stride = dim, num_image_token, stride, train_stride
        self.generator: Optional[torch.Generator] = None
        self.tok_emb = nn.Embedding(vocab_size, dim)
        self.layout = LayoutLM2DEmbedding(dim, max_2d_positions, init_std)
        self.patch_proj = nn.Linear(patch_dim, dim) if patch_dim else None
        pe = V2PE(dim // num_heads, base=rope_base)
        self.blocks = nn.ModuleList([Block(dim, num_heads, mlp_ratio, drop=drop, pe=pe, norm_eps=norm_eps)
                                     for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.head = nn.Linear(dim, num_classes) if num_classes else None
        self.link_head = EntityLinkingHead(dim, link_dim) if link_dim else None
        nn.init.normal_(self.tok_emb.weight, std=init_std)

    def positions(self, visual: Tensor, mask: Tensor) -> Tensor:
        stride = self.train_stride if (self.training and self.train_stride is not None) else self.stride
        return v2pe_position_ids(visual, mask, stride, self.num_image_token, generator=self.generator)

    def forward(self, input_ids: Tensor, boxes: Optional[Tensor] = None, mask: Optional[Tensor] = None,
                patches: Optional[Tensor] = None, pos: Optional[Positions] = None) -> Tensor:
        """``input_ids [b, n]``, ``boxes [b, n, 4]``, ``mask [b, n]``, ``patches [b, P, patch_dim]`` -> word
        features ``[b, n, c]``."""
        check_input_ids(input_ids, self.tok_emb.num_embeddings)
        b, n = input_ids.shape
        if pos is not None:
            boxes = pos.boxes if boxes is None else boxes
            mask = pos.mask if mask is None else mask
        bx = _check_doc_boxes(boxes, b, n).to(input_ids.device)
        mask = _check_mask(mask, b, n)
        dev = input_ids.device
        x = self.layout.embed(self.tok_emb(input_ids), Positions(boxes=bx))      # [b, n, c]
        wmask = torch.ones(b, n, dtype=torch.bool, device=dev) if mask is None else mask.to(dev)
        p = 0
        if patches is not None:
            if self.patch_proj is None:
                raise ValueError("this model was built without patch_dim; it takes no patches")
            if not isinstance(patches, Tensor) or patches.ndim != 3 or patches.shape[0] != b \
                    or patches.shape[-1] != self.patch_proj.in_features:
                raise ValueError(f"patches must be [b, P, patch_dim] = [{b}, P, {self.patch_proj.in_features}], got "
                                 f"{tuple(patches.shape) if isinstance(patches, Tensor) else type(patches).__name__}")
            p = patches.shape[1]
            x = torch.cat([self.patch_proj(patches.to(x.dtype)), x], dim=1)     # [b, P + n, c]
            wmask = torch.cat([torch.ones(b, p, dtype=torch.bool, device=dev), wmask], dim=1)
        visual = torch.zeros(b, p + n, dtype=torch.bool, device=dev)
        visual[:, :p] = True
        ids = self.positions(visual, wmask).to(dev)                              # [b, P + n] float32
        apos = Positions(ids=ids, mask=None if mask is None else wmask)
        for blk in self.blocks:
            x = blk(x, apos)
        x = self.norm(x[:, p:])
        return x if self.head is None else self.head(x)


# ---- entrypoints --------------------------------------------------------------------------------------------------

_TINY = dict(dim=192, depth=4, num_heads=4, mlp_hidden=768)
_BASE = dict(dim=768, depth=12, num_heads=12, mlp_hidden=3072)


def _doc(kind: str, size: dict, **kwargs) -> DocEncoder:
    args = dict(kind=kind, vocab_size=50265 if kind == "layoutlmv3" else 30522, **size)
    args.update(kwargs)
    return DocEncoder(**args)


@register_model(paper=PAPERS["layoutlm"], filter_fn=checkpoint_filter_fn)
def doc_layoutlm_tiny(**kwargs) -> DocEncoder:
    """LayoutLM (v1) text encoder, 2D absolute box tables; dim 192, depth 4, 4 heads."""
    return _doc("layoutlm", _TINY, **kwargs)


@register_model(paper=PAPERS["layoutlm"], filter_fn=checkpoint_filter_fn)
def doc_layoutlm_base(**kwargs) -> DocEncoder:
    """LayoutLM (v1) base sizes (HF ``microsoft/layoutlm-base-uncased`` layout): dim 768, depth 12, 12 heads."""
    return _doc("layoutlm", _BASE, **kwargs)


@register_model(paper=PAPERS["layoutlmv3"], filter_fn=checkpoint_filter_fn)
def doc_layoutlmv3_tiny(**kwargs) -> DocEncoder:
    """LayoutLMv3 text part: concat 2D embedding + spatial-aware relative bias; dim 192, depth 4, 4 heads."""
    return _doc("layoutlmv3", _TINY, **kwargs)


@register_model(paper=PAPERS["layoutlmv3"], filter_fn=checkpoint_filter_fn)
def doc_layoutlmv3_base(**kwargs) -> DocEncoder:
    """LayoutLMv3 text part, base sizes (HF ``microsoft/layoutlmv3-base`` text weights): dim 768, depth 12."""
    return _doc("layoutlmv3", _BASE, **kwargs)


@register_model(paper=PAPERS["bros"], filter_fn=checkpoint_filter_fn)
def doc_bros_tiny(**kwargs) -> DocEncoder:
    """BROS encoder, relative box sinusoids on the queries (crel); dim 192, depth 4, 4 heads."""
    return _doc("bros", _TINY, **kwargs)


@register_model(paper=PAPERS["bros"], filter_fn=checkpoint_filter_fn)
def doc_bros_base(**kwargs) -> DocEncoder:
    """BROS base sizes (HF ``naver-clova-ocr/bros-base-uncased`` layout): dim 768, depth 12, 12 heads."""
    return _doc("bros", _BASE, **kwargs)


@register_model(paper=PAPERS["graph_rope"])
def doc_graph_rope_tiny(**kwargs) -> DocGraphRopeEncoder:
    """Word-graph encoder with reading-order codes (ROPE), k-NN graph k=8; dim 128, depth 3."""
    return DocGraphRopeEncoder(**{"dim": 128, "depth": 3, "code_dim": 32, **kwargs})


@register_model(paper=PAPERS["graph_rope"])
def doc_graph_rope_small(**kwargs) -> DocGraphRopeEncoder:
    """Word-graph encoder with reading-order codes (ROPE), k-NN graph k=8; dim 256, depth 6."""
    return DocGraphRopeEncoder(**{"dim": 256, "depth": 6, "code_dim": 64, **kwargs})


@register_model(paper=PAPERS["v2pe"])
def doc_v2pe_tiny(**kwargs) -> DocV2PEEncoder:
    """Page encoder, V2PE float positions for patches + words; dim 128, depth 4, 4 heads, patch_dim 768."""
    return DocV2PEEncoder(**{"dim": 128, "depth": 4, "num_heads": 4, "patch_dim": 768, **kwargs})


@register_model(paper=PAPERS["v2pe"])
def doc_v2pe_small(**kwargs) -> DocV2PEEncoder:
    """Page encoder, V2PE float positions for patches + words; dim 256, depth 6, 8 heads, patch_dim 768."""
    return DocV2PEEncoder(**{"dim": 256, "depth": 6, "num_heads": 8, "patch_dim": 768, **kwargs})
