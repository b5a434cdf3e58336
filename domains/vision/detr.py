"""DETR with iRPE in the encoder (Carion et al., ECCV 2020; Wu et al., ICCV 2021).

"End-to-End Object Detection with Transformers", https://arxiv.org/abs/2005.12872 (facebookresearch/detr) and
"Rethinking and Improving Relative Position Encoding for Vision Transformer", https://arxiv.org/abs/2107.14222
(microsoft/Cream ``iRPE/DETR-with-iRPE``: ``models/transformer.py``, ``models/rpe_attention/``). What the official
DETR-with-iRPE does, and so what this file does:

    images [B, 3, H, W] + pixel mask [B, H, W] (True = real pixel)
      --backbone--> feat [B, Cb, h, w], mask [B, h, w]                       (ResNet-50: stride 32, Cb 2048)
      --input_proj (1x1 conv)--> src [B, h*w, C]     pos = DETR sine embedding of the mask [B, h*w, C]
      --encoder x6 (post-norm)-->  q = k = src + pos, v = src;  logits += iRPE on keys over the h x w grid
                                   (``rpe-1.9-product-ctx-1-k``: contextual, product, 7x7 buckets, one table
                                   shared by the heads, skip=0: no prefix token, explicit (h, w))
      --decoder x6 (post-norm)-->  object queries; self-attention and cross-attention to memory + pos, plain
                                   softmax attention (no iRPE: the official code puts it in the encoder only)
      --class_embed / bbox_embed--> pred_logits [B, Q, K+1], pred_boxes [B, Q, 4] (cx, cy, w, h) in [0, 1]

The sine embedding is kept: DETR-with-iRPE adds iRPE on top of DETR's absolute sinusoid ("Absolute Position
Encoding: Sinusoid" in its README), so queries and keys of every encoder layer see ``src + pos`` and the iRPE term
is computed from those (scaled) queries, as in ``rpe_attention_function.py``. Every attention is `zoo.nn.Attention`
(encoder: ``pe=IRPE(...)``); q, k and v come from different inputs here (``attn(q_in, pos, key=k_in, value=v_in)``),
which runs the fused ``qkv`` weight's three row blocks apart (its rows are ordered q | k | v exactly like
``nn.MultiheadAttention.in_proj_weight``, so official checkpoints map key to key).

Padding: the pixel mask becomes a token mask (``Positions.mask``), which masks padded keys in every attention;
padded tokens keep their place in the grid, so iRPE's relative offsets between real tokens do not change. The tiny
backbone zeroes padded pixels and features after every convolution, so a padded image gives the same outputs as the
image alone; the ResNet backbone, like DETR's, sees the zero padding through its receptive field.

Official checkpoint layout (``{'model': sd, ...}``, verified in the official code; ``checkpoint_filter_fn`` maps it):

    backbone.0.body.{conv1, bn1, layer1..4}.*          torchvision ResNet, FrozenBatchNorm2d (weight, bias,
                                                       running_mean, running_var; no num_batches_tracked)
    input_proj.{weight [C, 2048, 1, 1], bias}          query_embed.weight [Q, C]
    class_embed.{weight [K+1, C], bias}                bbox_embed.layers.{0,1,2}.{weight, bias}
    transformer.encoder.layers.{i}.self_attn.{in_proj_weight [3C, C], in_proj_bias [3C], out_proj.{weight, bias}}
    transformer.encoder.layers.{i}.self_attn.rpe_k.lookup_table_weight [1, C/heads, 49]      (ratio 1.9, shared)
    transformer.encoder.layers.{i}.{linear1, linear2, norm1, norm2}.*
    transformer.decoder.layers.{i}.{self_attn, multihead_attn}.{in_proj_weight, in_proj_bias, out_proj.*}
    transformer.decoder.layers.{i}.{linear1, linear2, norm1, norm2, norm3}.*    transformer.decoder.norm.*

Ours: ``backbone.body.*``, ``...self_attn.qkv.*`` / ``.proj.*``, ``...self_attn.pe.rpe_k.lookup_table_weight``, and
``cross_attn`` for ``multihead_attn``; the rest is unchanged.

``pe=`` puts any 2D encoding of `zoo.pe` in the encoder instead of the iRPE (``enc_rpe2d=None``): attention
encodings in every encoder self-attention, embedding-only ones on the projected features before the encoder; the
sine embedding stays, as in DETR-with-iRPE.  The decoder's attention has no grid positions and keeps none.
"""
from __future__ import annotations

import logging
import math
import re
from collections import OrderedDict
from dataclasses import replace
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.errors import CheckpointError, ConfigError
from zoo.nn import Attention
from zoo.nn.fit import check_fit, register_family
from zoo.nn.transformer import any_spec, spec_label
from zoo.pe import build as build_pe
from zoo.pe.irpe import IRPE
from zoo.positions import Positions
from zoo.registry import PretrainedCfg, register_model

from .checkpoint import unwrap_state_dict
from .layers import check_images

__all__ = ["DETR", "DETRTransformer", "TinyConvBackbone", "ResNetBackbone", "HungarianMatcher", "SetCriterion",
           "sine_position_embedding", "parse_rpe_string", "box_cxcywh_to_xyxy", "box_xyxy_to_cxcywh", "box_iou",
           "generalized_box_iou", "postprocess", "checkpoint_filter_fn"]

_log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IRPE_PAPER = "https://arxiv.org/abs/2107.14222"
DETR_PAPER = "https://arxiv.org/abs/2005.12872"


# ---- boxes ------------------------------------------------------------------------------------------------------

def box_cxcywh_to_xyxy(b: Tensor) -> Tensor:
    """``[..., 4]`` (cx, cy, w, h) -> (x0, y0, x1, y1)."""
    cx, cy, w, h = b.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def box_xyxy_to_cxcywh(b: Tensor) -> Tensor:
    """``[..., 4]`` (x0, y0, x1, y1) -> (cx, cy, w, h)."""
    x0, y0, x1, y1 = b.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def box_area(b: Tensor) -> Tensor:
    return (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])


def box_iou(a: Tensor, b: Tensor) -> Tuple[Tensor, Tensor]:
    """Pairwise IoU and union of xyxy boxes ``a [N, 4]``, ``b [M, 4]`` -> ``[N, M]`` each."""
    lt = torch.max(a[:, None, :2], b[None, :, :2])                           # [N, M, 2]
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])                           # [N, M, 2]
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return inter / union, union


def generalized_box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise GIoU (Rezatofighi et al., CVPR 2019) of xyxy boxes: ``IoU - (|C| - |A u B|) / |C|`` with ``C`` the
    smallest box enclosing both; ``[N, M]`` in [-1, 1]."""
    iou, union = box_iou(a, b)
    lt = torch.min(a[:, None, :2], b[None, :, :2])
    rb = torch.max(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    enclosing = wh[..., 0] * wh[..., 1]
    return iou - (enclosing - union) / enclosing


# ---- DETR's sine embedding --------------------------------------------------------------------------------------

def sine_position_embedding(mask: Tensor, num_pos_feats: int = 128, temperature: float = 10000.0,
                            normalize: bool = True, scale: float = 2 * math.pi) -> Tensor:
    """DETR's ``PositionEmbeddingSine`` of a feature-map mask ``[B, h, w]`` (True = real) -> ``[B, h*w, 2F]``.

    Positions are the running counts of real cells along each column (y) and row (x), so a padded image gives its
    real cells the same embedding as the image alone; with ``normalize`` they are divided by the real extent and
    multiplied by ``scale``. Channels: ``[y | x]``, each ``F`` wide and interleaved ``sin(p/t_0), cos(p/t_0),
    sin(p/t_1), ...`` with ``t_i = temperature^(2 floor(i/2) / F)``. Computed in float32.
    """
    valid = mask.to(torch.float32)
    y = valid.cumsum(1)                                                           # [B, h, w]
    x = valid.cumsum(2)
    if normalize:
        eps = 1e-6
        y = y / (y[:, -1:, :] + eps) * scale
        x = x / (x[:, :, -1:] + eps) * scale
    i = torch.arange(num_pos_feats, dtype=torch.float32, device=mask.device)
    dim_t = temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / num_pos_feats)   # [F]
    px = x[..., None] / dim_t                                                     # [B, h, w, F]
    py = y[..., None] / dim_t
    px = torch.stack([px[..., 0::2].sin(), px[..., 1::2].cos()], dim=4).flatten(3)
    py = torch.stack([py[..., 0::2].sin(), py[..., 1::2].cos()], dim=4).flatten(3)
    return torch.cat([py, px], dim=3).flatten(1, 2)                               # [B, h*w, 2F]


# ---- backbones: forward(images, mask) -> (features [B, C, h, w], mask [B, h, w]) --------------------------------

class TinyConvBackbone(nn.Module):
    """A small CNN for tests and CPU runs: ``len(channels)`` stages of ``conv3x3 stride 2 + ReLU`` (stride
    ``2^stages``). Padded pixels and features are zeroed after every stage (the mask is subsampled with the
    stride), so padding never leaks into real positions. No downloads, no normalisation layers."""

    def __init__(self, channels: Sequence[int] = (32, 64, 96, 128), in_chans: int = 3):
        super().__init__()
        layers: "OrderedDict[str, nn.Module]" = OrderedDict()
        prev = in_chans
        for i, c in enumerate(channels):
            layers[f"conv{i}"] = nn.Conv2d(prev, c, kernel_size=3, stride=2, padding=1)
            prev = c
        self.body = nn.Sequential(layers)
        self.num_channels = prev
        self.in_chans = in_chans
        self.stride = 2 ** len(channels)

    def forward(self, x: Tensor, mask: Tensor) -> Tuple[Tensor, Tensor]:
        m = mask
        x = x * m[:, None].to(x.dtype)
        for conv in self.body:
            x = F.relu(conv(x))
            m = m[:, ::2, ::2]                                  # output cell i is centred on input cell 2i
            x = x * m[:, None].to(x.dtype)
        return x, m


class ResNetBackbone(nn.Module):
    """torchvision ResNet (no pretrained download: ``weights=None``) with frozen BatchNorm, as DETR's backbone:
    ``body`` holds conv1 .. layer4 (stride 32; 2048 channels for resnet50). Parameters outside ``train_layers``
    (conv1 and layer1 by default, as DETR) do not train. The mask is resized to the feature map (nearest)."""

    def __init__(self, name: str = "resnet50", dilation: bool = False,
                 train_layers: Sequence[str] = ("layer2", "layer3", "layer4")):
        super().__init__()
        import torchvision
        from torchvision.ops.misc import FrozenBatchNorm2d
        if not name.startswith("resnet") or not hasattr(torchvision.models, name):
            raise ConfigError(f"backbone {name!r} is not a torchvision ResNet (resnet18/34/50/101/152)")
        net = getattr(torchvision.models, name)(weights=None, norm_layer=FrozenBatchNorm2d,
                                                replace_stride_with_dilation=[False, False, dilation])
        self.body = nn.Sequential(OrderedDict(
            (k, getattr(net, k)) for k in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3",
                                           "layer4")))
        self.num_channels = 512 if name in ("resnet18", "resnet34") else 2048
        self.in_chans = 3
        self.stride = 16 if dilation else 32
        for n, p in self.body.named_parameters():
            if not any(n.startswith(t) for t in train_layers):
                p.requires_grad_(False)

    def forward(self, x: Tensor, mask: Tensor) -> Tuple[Tensor, Tensor]:
        x = self.body(x)
        m = F.interpolate(mask[None].float(), size=x.shape[-2:]).to(torch.bool)[0]
        return x, m


# ---- transformer ------------------------------------------------------------------------------------------------

class EncoderLayer(nn.Module):
    """DETR's post-norm encoder layer; queries and keys are ``src + pos``, values ``src``."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float, pe: Optional[nn.Module]):
        super().__init__()
        self.self_attn = Attention(d_model, nhead, qkv_bias=True, attn_drop=dropout, pe=pe)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, src: Tensor, pos_embed: Tensor, pos: Positions) -> Tensor:
        qk = src + pos_embed
        src = self.norm1(src + self.dropout1(self.self_attn(qk, pos, key=qk, value=src)))
        src2 = self.linear2(self.dropout(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout2(src2))


class DecoderLayer(nn.Module):
    """DETR's post-norm decoder layer: query self-attention, cross-attention to the memory, FFN."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.self_attn = Attention(d_model, nhead, qkv_bias=True, attn_drop=dropout)
        self.cross_attn = Attention(d_model, nhead, qkv_bias=True, attn_drop=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(self, tgt: Tensor, memory: Tensor, pos_embed: Tensor, query_pos: Tensor,
                memory_pos: Optional[Positions]) -> Tensor:
        q = tgt + query_pos
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, key=q, value=tgt)))
        tgt2 = self.cross_attn(tgt + query_pos, memory_pos, key=memory + pos_embed, value=memory)
        tgt = self.norm2(tgt + self.dropout2(tgt2))
        tgt2 = self.linear2(self.dropout(F.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout3(tgt2))


class _Stack(nn.Module):
    def __init__(self, layers: List[nn.Module], norm: Optional[nn.Module] = None):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        if norm is not None:
            self.norm = norm


class DETRTransformer(nn.Module):
    """Encoder (iRPE in self-attention when ``rpe`` is given, or any 2D encoding ``pe``) + decoder returning every
    layer's normed output.

    Args:
        rpe: `IRPE` keyword arguments (``method, mode, ratio, shared_head, rpe_on``; ``skip`` is 0) or None.
        pe: a 2D encoding spec (registered name or ``{"name": ..., **kwargs}``) instead of ``rpe``; built for
            ``grid_size`` (encodings with a table resample it to other grids).  It keeps its own initialisation.
    """

    def __init__(self, d_model: int = 256, nhead: int = 8, num_encoder_layers: int = 6,
                 num_decoder_layers: int = 6, dim_feedforward: int = 2048, dropout: float = 0.1,
                 rpe: Optional[Dict[str, Any]] = None, pe: Union[None, str, Mapping[str, Any]] = None,
                 grid_size: Tuple[int, int] = (25, 42)):
        super().__init__()
        if d_model % nhead:
            raise ConfigError(f"hidden_dim {d_model} is not divisible by nheads {nhead}")
        if rpe is not None and pe is not None:
            raise ConfigError("give the encoder either an iRPE (enc_rpe2d) or pe=, not both")
        head_dim = d_model // nhead
        self.embed_pe: Optional[nn.Module] = None
        if pe is not None:
            pes = self._encodings(pe, d_model, nhead, num_encoder_layers, tuple(grid_size))
        else:
            pes = [None if rpe is None else IRPE(head_dim, nhead, skip=0, **rpe) for _ in range(num_encoder_layers)]

        self.encoder = _Stack([EncoderLayer(d_model, nhead, dim_feedforward, dropout, pes[i])
                               for i in range(num_encoder_layers)])
        self.decoder = _Stack([DecoderLayer(d_model, nhead, dim_feedforward, dropout)
                               for _ in range(num_decoder_layers)], nn.LayerNorm(d_model))
        self.d_model, self.nhead = d_model, nhead
        self._reset_parameters(keep=pes if pe is not None else ())

    def _encodings(self, spec, d_model: int, nhead: int, depth: int, grid_size: Tuple[int, int]) -> list:
        """Check ``spec`` against the encoder (2D positions, no prefix token) and build one encoding per encoder
        layer (None each for an embedding-only encoding, which becomes ``embed_pe``)."""
        meta = check_fit(spec, model="DETR encoder", positions=("2d",), causal=False)
        if "num_prefix" in meta.accepts:
            spec = {"num_prefix": 0, **any_spec(spec)}
        geometry = dict(dim=d_model, head_dim=d_model // nhead, num_heads=nhead, causal=False,
                        max_len=grid_size[0] * grid_size[1], depth=max(depth, 1), grid_size=grid_size)
        first = build_pe(spec, **geometry)
        if not (first.has_rotate or first.has_bias or first.needs_weights):
            self.embed_pe = first
            return [None] * depth
        if hasattr(first, "layer"):                                               # one module, a view per layer
            self.pe = first
            return [first.layer(i) for i in range(depth)]
        return [first if i == 0 else build_pe(spec, **geometry) for i in range(depth)]

    def _reset_parameters(self, keep: Sequence[Optional[nn.Module]] = ()) -> None:
        # as the official Transformer._reset_parameters: xavier on every matrix -- including the iRPE tables,
        # which DETR-with-iRPE builds before this runs (so they do not start at zero there, unlike DeiT-iRPE).
        # An encoding given by pe= keeps the initialisation its own paper gives it.
        own = [m for m in (*keep, self.embed_pe, getattr(self, "pe", None)) if m is not None]
        skip = {id(p) for m in own for p in m.parameters()}
        for p in self.parameters():
            if p.dim() > 1 and id(p) not in skip:
                nn.init.xavier_uniform_(p)
        for m in self.modules():          # nn.MultiheadAttention zero-initialises its projection biases
            if isinstance(m, Attention):
                nn.init.zeros_(m.qkv.bias)
                nn.init.zeros_(m.proj.bias)

    def forward(self, src: Tensor, mask: Tensor, query_embed: Tensor, pos_embed: Tensor) -> Tuple[Tensor, Tensor]:
        """``src [B, C, h, w]``, ``mask [B, h, w]`` (True = real), ``query_embed [Q, C]``, ``pos_embed [B, h*w, C]``
        -> ``(hs [L_dec, B, Q, C], memory [B, h*w, C])``."""
        b, c, h, w = src.shape
        src = src.flatten(2).transpose(1, 2)                                      # [B, h*w, C]
        token_mask = mask.flatten(1)                                              # [B, h*w]
        pos = Positions.grid_2d(h, w, device=src.device)                          # explicit (h, w), skip = 0
        if not bool(token_mask.all()):
            pos = replace(pos, mask=token_mask)
        if self.embed_pe is not None:
            src = self.embed_pe.embed(src, pos)
        memory = src
        for layer in self.encoder.layers:
            memory = layer(memory, pos_embed, pos)
        memory_pos = Positions(mask=token_mask) if pos.mask is not None else None
        query_pos = query_embed.unsqueeze(0).expand(b, -1, -1)                    # [B, Q, C]
        tgt = torch.zeros_like(query_pos)
        hs = []
        for layer in self.decoder.layers:
            tgt = layer(tgt, memory, pos_embed, query_pos, memory_pos)
            hs.append(self.decoder.norm(tgt))
        return torch.stack(hs), memory


class MLP(nn.Module):
    """``num_layers`` linears with ReLU between them (DETR's box head; keys ``layers.{i}``)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        outs = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims, outs))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


# ---- model ------------------------------------------------------------------------------------------------------

_RPE_STRING = re.compile(r"^rpe-(?P<ratio>[0-9.]+)-(?P<method>[a-z]+)-(?P<mode>[a-z]+)-(?P<shared>[01])"
                         r"-(?P<on>[qkv]+)$")


def parse_rpe_string(s: Optional[str]) -> Optional[Dict[str, Any]]:
    """The official ``--enc_rpe2d`` format ``rpe-{ratio}-{method}-{mode}-{shared_head}-{rpe_on}`` -> `IRPE`
    keywords (``"rpe-1.9-product-ctx-1-k"`` -> ratio 1.9, product, contextual, shared, on keys); ""/None -> None."""
    if s is None or s == "":
        return None
    m = _RPE_STRING.match(str(s))
    if m is None:
        raise ConfigError(f"invalid iRPE string {s!r}; expected rpe-{{ratio}}-{{method}}-{{mode}}-{{shared_head}}-"
                          f"{{rpe_on}}, e.g. 'rpe-1.9-product-ctx-1-k' (method euc|quant|cross|product, mode "
                          f"ctx|bias, shared_head 0|1, rpe_on q|k|v|qk|qkv)")
    mode = {"ctx": "contextual", "contextual": "contextual", "bias": "bias"}.get(m["mode"])
    if mode is None:
        raise ConfigError(f"invalid iRPE mode {m['mode']!r} in {s!r}; expected ctx or bias")
    return dict(ratio=float(m["ratio"]), method=m["method"], mode=mode, shared_head=m["shared"] == "1",
                rpe_on=m["on"])


class DETR(nn.Module):
    """DETR: backbone -> 1x1 projection -> transformer -> class and box heads.

    Args:
        backbone: a module ``forward(images, mask) -> (features [B, Cb, h, w], mask [B, h, w])`` with
            ``num_channels``; "resnet50"/"resnet18"/... (torchvision, frozen BN, no download) or "tiny".
        num_classes: object classes ``K`` (the head has ``K + 1`` outputs, the last one "no object"). DETR's COCO
            models use 91 (max category id + 1).
        num_queries: object queries ``Q``.
        hidden_dim, nheads, enc_layers, dec_layers, dim_feedforward, dropout: transformer geometry.
        enc_rpe2d: the official iRPE string for the encoder (``""``/None: plain DETR).
        pe: any 2D encoding of `zoo.pe` for the encoder instead (a registered name or ``{"name": ..., **kwargs}``;
            needs ``enc_rpe2d=None``), built for the feature grid of an 800 x 1333 image at the backbone's stride.
        aux_loss: also return every earlier decoder layer's predictions (``aux_outputs``).
        backbone_kwargs: passed to the backbone class when ``backbone`` is a name.
    """

    def __init__(self, backbone: Any = "resnet50", num_classes: int = 91, num_queries: int = 100,
                 hidden_dim: int = 256, nheads: int = 8, enc_layers: int = 6, dec_layers: int = 6,
                 dim_feedforward: int = 2048, dropout: float = 0.1,
                 enc_rpe2d: Optional[str] = "rpe-1.9-product-ctx-1-k",
                 aux_loss: bool = True, backbone_kwargs: Optional[Dict[str, Any]] = None,
                 pe: Union[None, str, Mapping[str, Any]] = None):
        super().__init__()
        if pe is not None and enc_rpe2d:
            raise ConfigError(f"pe= replaces the encoder's iRPE: give it with enc_rpe2d=None (got enc_rpe2d="
                              f"{enc_rpe2d!r})")
        if hidden_dim % 4:
            raise ConfigError(f"hidden_dim must be a multiple of 4 (the sine embedding gives each axis hidden_dim/2 "
                              f"channels of sin/cos pairs), got {hidden_dim}")
        if num_classes <= 0 or num_queries <= 0 or dec_layers <= 0:
            raise ConfigError(f"num_classes, num_queries and dec_layers must be positive, got {num_classes}, "
                              f"{num_queries}, {dec_layers}")
        self.config: Dict[str, Any] = dict(
            backbone=backbone if isinstance(backbone, str) else type(backbone).__name__, num_classes=num_classes,
            num_queries=num_queries, hidden_dim=hidden_dim, nheads=nheads, enc_layers=enc_layers,
            dec_layers=dec_layers, dim_feedforward=dim_feedforward, dropout=dropout, enc_rpe2d=enc_rpe2d or "",
            aux_loss=aux_loss, backbone_kwargs=dict(backbone_kwargs or {}), pe=spec_label(pe) and any_spec(pe))
        if isinstance(backbone, str):
            kw = dict(backbone_kwargs or {})
            backbone = TinyConvBackbone(**kw) if backbone == "tiny" else ResNetBackbone(backbone, **kw)
        self.num_classes, self.num_queries, self.aux_loss = num_classes, num_queries, aux_loss
        self.backbone = backbone
        self.input_proj = nn.Conv2d(backbone.num_channels, hidden_dim, kernel_size=1)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        stride = getattr(backbone, "stride", 32)
        self.transformer = DETRTransformer(hidden_dim, nheads, enc_layers, dec_layers, dim_feedforward, dropout,
                                           rpe=parse_rpe_string(enc_rpe2d), pe=pe,
                                           grid_size=(math.ceil(800 / stride), math.ceil(1333 / stride)))
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)

    def param_groups(self, lr: float = 1e-4, lr_backbone: float = 1e-5, weight_decay: float = 1e-4) -> List[dict]:
        """DETR's optimiser groups: the backbone at ``lr_backbone``, everything else at ``lr`` (AdamW)."""
        rest = [p for n, p in self.named_parameters() if not n.startswith("backbone.") and p.requires_grad]
        bb = [p for n, p in self.named_parameters() if n.startswith("backbone.") and p.requires_grad]
        return [{"params": rest, "lr": lr, "weight_decay": weight_decay},
                {"params": bb, "lr": lr_backbone, "weight_decay": weight_decay}]

    def forward(self, images: Tensor, mask: Optional[Tensor] = None) -> Dict[str, Any]:
        """``images [B, 3, H, W]``, ``mask [B, H, W]`` (True = real pixel; None = no padding) -> ``pred_logits
        [B, Q, K+1]``, ``pred_boxes [B, Q, 4]`` (cx, cy, w, h relative to each image's real extent) and, with
        ``aux_loss``, ``aux_outputs`` (one such dict per earlier decoder layer)."""
        check_images(images, getattr(self.backbone, "in_chans", None))
        b, _, hh, ww = images.shape
        if mask is None:
            mask = torch.ones(b, hh, ww, dtype=torch.bool, device=images.device)
        elif tuple(mask.shape) != (b, hh, ww):
            raise ValueError(f"mask must be [B, H, W] = {(b, hh, ww)} (True on real pixels), got {tuple(mask.shape)}")
        mask = mask.to(device=images.device, dtype=torch.bool)
        feat, fmask = self.backbone(images, mask)                                 # [B, Cb, h, w], [B, h, w]
        pos_embed = sine_position_embedding(fmask, self.transformer.d_model // 2).to(feat.dtype)   # [B, h*w, C]
        hs, _ = self.transformer(self.input_proj(feat), fmask, self.query_embed.weight, pos_embed)
        logits = self.class_embed(hs)                                             # [L, B, Q, K+1]
        boxes = self.bbox_embed(hs).sigmoid()                                     # [L, B, Q, 4]
        out: Dict[str, Any] = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        if self.aux_loss:
            out["aux_outputs"] = [{"pred_logits": a, "pred_boxes": c} for a, c in zip(logits[:-1], boxes[:-1])]
        return out


@torch.no_grad()
def postprocess(outputs: Dict[str, Tensor], target_sizes: Tensor) -> List[Dict[str, Tensor]]:
    """Per image: ``scores``, ``labels`` (best real class of each query) and ``boxes`` xyxy in pixels of
    ``target_sizes [B, 2]`` (H, W) -- e.g. a target's ``orig_size``."""
    prob = outputs["pred_logits"].softmax(-1)
    scores, labels = prob[..., :-1].max(-1)
    h, w = target_sizes.unbind(1)
    scale = torch.stack([w, h, w, h], dim=1).to(outputs["pred_boxes"].dtype)
    boxes = box_cxcywh_to_xyxy(outputs["pred_boxes"]) * scale[:, None, :]
    return [{"scores": s, "labels": l, "boxes": bx} for s, l, bx in zip(scores, labels, boxes)]


# ---- matching and loss ------------------------------------------------------------------------------------------

class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to targets minimising
    ``cost_class * (-p(class)) + cost_bbox * L1(cxcywh) + cost_giou * (-GIoU(xyxy))`` per image
    (``scipy.optimize.linear_sum_assignment``). DETR's weights: 1, 5, 2."""

    def __init__(self, cost_class: float = 1.0, cost_bbox: float = 5.0, cost_giou: float = 2.0):
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ConfigError("all matcher costs are 0")
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou

    @torch.no_grad()
    def cost_matrices(self, outputs: Dict[str, Tensor], targets: List[Dict[str, Tensor]]) -> List[Tensor]:
        """Per image ``[Q, n_i]`` cost of giving query q target j (float32, on the outputs' device)."""
        prob = outputs["pred_logits"].float().softmax(-1)                         # [B, Q, K+1]
        pred = outputs["pred_boxes"].float()                                      # [B, Q, 4]
        out = []
        for i, t in enumerate(targets):
            tgt_boxes = t["boxes"].to(pred)
            labels = t["labels"].to(prob.device)
            if tgt_boxes.numel() == 0:
                out.append(pred.new_zeros(pred.shape[1], 0))
                continue
            c_class = -prob[i][:, labels]                                        # [Q, n]
            c_bbox = torch.cdist(pred[i], tgt_boxes, p=1)                         # [Q, n]
            c_giou = -generalized_box_iou(box_cxcywh_to_xyxy(pred[i]), box_cxcywh_to_xyxy(tgt_boxes))
            out.append(self.cost_bbox * c_bbox + self.cost_class * c_class + self.cost_giou * c_giou)
        return out

    @torch.no_grad()
    def forward(self, outputs: Dict[str, Tensor], targets: List[Dict[str, Tensor]]) -> List[Tuple[Tensor, Tensor]]:
        """``[(query_idx long [m_i], target_idx long [m_i]) per image]``, ``m_i = min(Q, n_i)``."""
        from scipy.optimize import linear_sum_assignment
        result = []
        for c in self.cost_matrices(outputs, targets):
            if c.shape[1] == 0:
                result.append((torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)))
                continue
            rows, cols = linear_sum_assignment(c.cpu().numpy())
            result.append((torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)))
        return result


class SetCriterion(nn.Module):
    """DETR's set loss: Hungarian matching, then cross-entropy over all queries (unmatched ones -> "no object",
    weighted ``eos_coef``), L1 and GIoU on matched boxes, each box loss divided by the number of target boxes; the
    same on every ``aux_outputs`` entry (keys suffixed ``_{i}``). ``forward`` returns every term and ``loss``,
    their sum weighted by ``weight_dict`` (DETR: ce 1, bbox 5, giou 2)."""

    def __init__(self, num_classes: int, matcher: Optional[HungarianMatcher] = None, eos_coef: float = 0.1,
                 weight_dict: Optional[Dict[str, float]] = None):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher if matcher is not None else HungarianMatcher()
        self.eos_coef = eos_coef
        self.weight_dict = dict(weight_dict or {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0})
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight, persistent=False)

    def _losses(self, outputs: Dict[str, Tensor], targets: List[Dict[str, Tensor]], num_boxes: float
                ) -> Dict[str, Tensor]:
        logits, pred = outputs["pred_logits"], outputs["pred_boxes"]
        if logits.shape[-1] != self.num_classes + 1:
            raise ValueError(f"pred_logits has {logits.shape[-1]} classes, the criterion expects "
                             f"num_classes + 1 = {self.num_classes + 1}")
        indices = self.matcher(outputs, targets)
        dev = logits.device
        batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)]).to(dev)
        src_idx = torch.cat([src for src, _ in indices]).to(dev)
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.long, device=dev)
        target_classes[batch_idx, src_idx] = torch.cat(
            [t["labels"].to(dev)[j] for t, (_, j) in zip(targets, indices)])
        loss_ce = F.cross_entropy(logits.transpose(1, 2), target_classes, self.empty_weight.to(logits.dtype))
        src_boxes = pred[batch_idx, src_idx]                                      # [M, 4]
        tgt_boxes = torch.cat([t["boxes"].to(pred)[j] for t, (_, j) in zip(targets, indices)])
        loss_bbox = F.l1_loss(src_boxes, tgt_boxes, reduction="none").sum() / num_boxes
        giou = generalized_box_iou(box_cxcywh_to_xyxy(src_boxes), box_cxcywh_to_xyxy(tgt_boxes))
        loss_giou = (1 - torch.diag(giou)).sum() / num_boxes
        return {"loss_ce": loss_ce, "loss_bbox": loss_bbox, "loss_giou": loss_giou}

    def forward(self, outputs: Dict[str, Any], targets: List[Dict[str, Tensor]]) -> Dict[str, Tensor]:
        num_boxes = max(float(sum(len(t["labels"]) for t in targets)), 1.0)
        losses = self._losses(outputs, targets, num_boxes)
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            losses.update({f"{k}_{i}": v for k, v in self._losses(aux, targets, num_boxes).items()})
        losses["loss"] = sum(v * self.weight_dict[k.rsplit("_", 1)[0] if k[-1].isdigit() else k]
                             for k, v in losses.items())
        return losses


# ---- checkpoint conversion --------------------------------------------------------------------------------------

_ATTN_NAMES = {"self_attn": "self_attn", "multihead_attn": "cross_attn"}
_OFFICIAL_ATTN_KEY = re.compile(
    r"^(transformer\.(?:encoder|decoder)\.layers\.\d+\.)(self_attn|multihead_attn)\.(in_proj_weight|in_proj_bias|"
    r"out_proj\.weight|out_proj\.bias|rpe_[qkv]\..+)$")
_ATTN_LEAF = {"in_proj_weight": "qkv.weight", "in_proj_bias": "qkv.bias", "out_proj.weight": "proj.weight",
              "out_proj.bias": "proj.bias"}


def official_key_to_zoo(key: str) -> str:
    """One key of facebookresearch/detr or DETR-with-iRPE -> ours (keys already in our layout pass through)."""
    if key.startswith("backbone.0."):
        return "backbone." + key[len("backbone.0."):]
    m = _OFFICIAL_ATTN_KEY.match(key)
    if m:
        prefix, mod, leaf = m.groups()
        leaf = _ATTN_LEAF.get(leaf, "pe." + leaf)                               # rpe_k.* -> pe.rpe_k.*
        return f"{prefix}{_ATTN_NAMES[mod]}.{leaf}"
    return key


def checkpoint_filter_fn(state_dict: dict, model: DETR) -> dict:
    """Convert an official DETR / DETR-with-iRPE checkpoint (``{'model': sd, 'args': ...}``) to ``model``'s keys.

    - unwraps ``{'model': sd}``, strips ``module.``; drops ``num_batches_tracked`` (frozen BN has none);
    - renames as documented at the top of this file (``official_key_to_zoo``);
    - a class head or query table of another size (other ``num_classes`` / ``num_queries``) is replaced by the
      model's freshly initialised one (warning);
    - an iRPE table of another shape raises `CheckpointError` naming the ratio / method / sharing it implies.
    Missing and unexpected keys are left for `zoo.load_checkpoint` to report.
    """
    sd = unwrap_state_dict(state_dict)
    own = model.state_dict()
    out: Dict[str, Any] = {}
    for k, v in sd.items():
        if k.endswith("num_batches_tracked"):
            continue
        out[official_key_to_zoo(k)] = v
    for keys, what in ((("class_embed.weight", "class_embed.bias"), f"{model.num_classes} classes"),
                       (("query_embed.weight",), f"{model.num_queries} queries")):
        if any(k in out and k in own and tuple(out[k].shape) != tuple(own[k].shape) for k in keys):
            _log.warning("checkpoint %s %s does not fit the model's %s: keeping the model's freshly initialised "
                         "weights", keys[0], tuple(out[keys[0]].shape), what)
            for k in keys:
                out[k] = own[k]
    for k, v in out.items():
        if "lookup_table_" in k and k in own and tuple(v.shape) != tuple(own[k].shape):
            pe = model.get_submodule(k.split(".rpe_")[0])
            raise CheckpointError(
                f"iRPE table {k}: checkpoint shape {tuple(v.shape)} vs model shape {tuple(own[k].shape)} (model: "
                f"method={pe.method}, ratio={pe.ratio}, shared_head={pe.shared_head}, {pe.num_buckets} buckets); "
                f"the checkpoint was trained with another enc_rpe2d (e.g. rpe-2.0-product-ctx-1-k has 81 buckets): "
                f"build the model with that string")
    return out


register_family("DETR encoder", positions=("2d",), causal=False, models="detr_*",
                note="in place of the encoder's iRPE: attention hooks in every encoder self-attention, embed hooks on "
                     "the projected features; the sine embedding and the decoder stay")


# ---- builders ---------------------------------------------------------------------------------------------------

def _detr_irpe_cfg() -> Dict[str, PretrainedCfg]:
    return {"coco": PretrainedCfg(
        url="https://github.com/wkcn/iRPE-model-zoo/releases/download/1.0/rpe-1.9-product-ctx-1-k.pth",
        license="Apache-2.0", paper=IRPE_PAPER, source="microsoft/Cream iRPE/DETR-with-iRPE", num_classes=91,
        input_size=(3, 800, 1333), mean=IMAGENET_MEAN, std=IMAGENET_STD,
        notes="official DETR-ResNet-50 + iRPE (--enc_rpe2d rpe-1.9-product-ctx-1-k: contextual product "
              "shared-head 7x7 buckets on keys, encoder only), 150 epochs on COCO 2017; '{model: sd}' checkpoint",
        metrics={"coco_val_ap": 40.9, "coco_val_ap50": 61.4})}


def _create_detr(defaults: Dict[str, Any], **kwargs) -> DETR:
    args = dict(defaults)
    if kwargs.get("pe") is not None:
        args["enc_rpe2d"] = None                               # pe= replaces the preset's iRPE
    args.update(kwargs)
    return DETR(**args)


@register_model(cfgs=_detr_irpe_cfg(), filter_fn=checkpoint_filter_fn, paper=IRPE_PAPER, timm=False)
def detr_irpe_r50(**kwargs) -> DETR:
    """DETR-ResNet-50 with contextual product iRPE on keys in the encoder (rpe-1.9-product-ctx-1-k), as released."""
    return _create_detr(dict(backbone="resnet50", num_classes=91, num_queries=100, hidden_dim=256, nheads=8,
                             enc_layers=6, dec_layers=6, dim_feedforward=2048), **kwargs)


@register_model(paper=IRPE_PAPER, timm=False)
def detr_irpe_tiny(**kwargs) -> DETR:
    """A CPU-sized DETR-iRPE: 4-stage conv backbone (stride 16), width 64, 2+2 layers, 20 queries; for tests."""
    return _create_detr(dict(backbone="tiny", num_classes=91, num_queries=20, hidden_dim=64, nheads=4,
                             enc_layers=2, dec_layers=2, dim_feedforward=128), **kwargs)
