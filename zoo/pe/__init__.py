"""Positional encodings: one file per family, torch only.

``zoo.pe.create(kind, **kwargs)`` builds an encoding by name; ``register_pe(kind, cls)`` adds a name.
"""
from __future__ import annotations

import difflib
from typing import Callable, Dict

from .base import PositionalEncoding, overrides

__all__ = ["PositionalEncoding", "overrides", "create", "register_pe", "list_pe"]

# ---- classic absolute / rotary / bias encodings --------------------------------------------------------------
from .alibi import (ALiBi, InterpolatedALiBi, alibi_bias, alibi_interpolation_scale, alibi_slopes,
                    query_key_positions)
from .cope import CoPE, cope_interpolate, cope_positions
from .fire import FIRE, fire_inputs
from .kerple import KerpleLog, KerplePower, kerple_distance, kerple_log_bias, kerple_power_bias
from .nope import NoPE
from .randomized import RandomizedPE, randomize_ids, randomized_positions
from .shaw import ShawRPE, ShawRPEWithValues, shaw_relative_index
from .t5 import T5RelativeBias, T5RelativeBiasUnscaledQK, t5_bucket
from .learned import LearnedAPE, resample_abs_pos_embed
from .rope import (RoPE, apply_rotary, half_to_interleaved, interleaved_to_half, p_rope_inv_freq, rope_angles,
                   rope_inv_freq)
from .rope_scaling import ROPE_TYPES, ScaledRoPE, rope_frequencies, rotary_dim
from .xpos import XPos, xpos_scale, xpos_zeta
from .pie import pie_edit_cache, pie_edit_positions, pie_rerotate
from .sincos import SinCosAPE, sincos_1d, sincos_2d

# ---- vision relative encodings -------------------------------------------------------------------------------
from .irpe import IRPE, irpe_bucket_ids, irpe_num_buckets, piecewise_index
from .peg import PEG
from .rmt import ManhattanDecay, manhattan_decay_bias, manhattan_log_decay
from .rope2d import AxialRoPE2d, MixedRoPE2d, axial_angles, axial_inv_freq, mixed_angles, mixed_freqs_init
from .lrpe import MdLrpeCosine, lrpe_theta, md_lrpe_angles
from .tpe import MdTpe, Tpe

# ---- documents: layout boxes, reading order, visual positions ---------------------------------------------------
from .bros import BrosRelativeBias, bros_corners, bros_inv_freq, bros_sinusoid
from .layout import (LayoutLM2DEmbedding, LayoutLMv3SpatialBias, LayoutLMv3SpatialEmbedding, check_boxes,
                     layoutlmv3_bucket, roberta_position_ids)
from .reading_order import (ReadingOrderBias, ReadingOrderGraphConv, beta_skeleton_graph, knn_graph,
                            reading_order_codes, reading_order_embedding)
from .v2pe import V2PE, V2PE_STRIDES, v2pe_position_ids

# ---- sequence structure: hierarchy (code), segments --------------------------------------------------------------
from .bipe import (LLAMA2_SEPARATORS, BiPEALiBi, BiPEIntraEmbedding, BiPERoPE, bipe_ids, bipe_positions)
from .hirope import HiRoPE, hierarchical_positions, hirope_angles, hirope_split

__all__ += [
    "SinCosAPE", "sincos_1d", "sincos_2d",
    "LearnedAPE", "resample_abs_pos_embed",
    "RoPE", "rope_inv_freq", "rope_angles", "apply_rotary", "interleaved_to_half", "half_to_interleaved",
    "p_rope_inv_freq", "ScaledRoPE", "rope_frequencies", "rotary_dim", "ROPE_TYPES",
    "XPos", "xpos_zeta", "xpos_scale", "pie_edit_positions", "pie_rerotate", "pie_edit_cache",
    "ALiBi", "alibi_slopes", "alibi_bias", "InterpolatedALiBi", "alibi_interpolation_scale", "query_key_positions",
    "t5_bucket", "T5RelativeBias", "T5RelativeBiasUnscaledQK", "shaw_relative_index", "ShawRPE", "ShawRPEWithValues",
    "KerpleLog", "KerplePower", "kerple_log_bias", "kerple_power_bias", "kerple_distance", "FIRE", "fire_inputs",
    "CoPE", "cope_positions", "cope_interpolate", "randomized_positions", "randomize_ids", "RandomizedPE", "NoPE",
    "IRPE", "irpe_bucket_ids", "irpe_num_buckets", "piecewise_index",
    "PEG", "ManhattanDecay", "manhattan_decay_bias", "manhattan_log_decay",
    "AxialRoPE2d", "MixedRoPE2d", "axial_angles", "axial_inv_freq", "mixed_angles", "mixed_freqs_init",
    "MdLrpeCosine", "lrpe_theta", "md_lrpe_angles", "MdTpe", "Tpe",
    "BrosRelativeBias", "bros_corners", "bros_inv_freq", "bros_sinusoid", "LayoutLM2DEmbedding",
    "LayoutLMv3SpatialBias", "LayoutLMv3SpatialEmbedding", "check_boxes", "layoutlmv3_bucket", "roberta_position_ids",
    "ReadingOrderBias", "ReadingOrderGraphConv", "beta_skeleton_graph", "knn_graph", "reading_order_codes",
    "reading_order_embedding", "V2PE", "V2PE_STRIDES", "v2pe_position_ids",
    "HiRoPE", "hierarchical_positions", "hirope_angles", "hirope_split",
    "LLAMA2_SEPARATORS", "bipe_ids", "bipe_positions", "BiPEIntraEmbedding", "BiPERoPE", "BiPEALiBi",
]

# ---- string factory ------------------------------------------------------------------------------------------
_FACTORY: Dict[str, Callable[..., PositionalEncoding]] = {
    "sincos": SinCosAPE,
    "learned": LearnedAPE,
    "rope": RoPE,
    "p_rope": RoPE,
    "rope_scaled": ScaledRoPE,
    "xpos": XPos,
    "alibi": ALiBi,
    "alibi_interp": InterpolatedALiBi,
    "t5": T5RelativeBias,
    "shaw": ShawRPE,
    "kerple_log": KerpleLog,
    "kerple_power": KerplePower,
    "fire": FIRE,
    "cope": CoPE,
    "randomized": RandomizedPE,
    "nope": NoPE,
    "irpe": IRPE,
    "peg": PEG,
    "manhattan_decay": ManhattanDecay,
    "rope2d_axial": AxialRoPE2d,
    "rope2d_mixed": MixedRoPE2d,
    "md_lrpe_cosine": MdLrpeCosine,
    "md_tpe": MdTpe,
    "layoutlm_2d": LayoutLM2DEmbedding,
    "layoutlmv3_spatial": LayoutLMv3SpatialEmbedding,
    "layoutlmv3_bias": LayoutLMv3SpatialBias,
    "bros": BrosRelativeBias,
    "v2pe": V2PE,
    "reading_order": ReadingOrderBias,
    "hirope": HiRoPE,
    "bipe_intra": BiPEIntraEmbedding,
    "bipe_rope": BiPERoPE,
    "bipe_alibi": BiPEALiBi,
}


def register_pe(kind: str, cls: Callable[..., PositionalEncoding], overwrite: bool = False) -> Callable:
    """Make ``create(kind, ...)`` build ``cls(...)``.  Returns ``cls`` (usable as a decorator argument)."""
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"kind must be a non-empty string, got {kind!r}")
    if not callable(cls):
        raise ValueError(f"cls for kind {kind!r} must be callable, got {cls!r}")
    if kind in _FACTORY and _FACTORY[kind] is not cls and not overwrite:
        raise ValueError(f"positional encoding kind {kind!r} is already registered to {_FACTORY[kind]!r}; "
                         f"pass overwrite=True to replace it")
    _FACTORY[kind] = cls
    return cls


def list_pe() -> list:
    """Registered kinds, sorted."""
    return sorted(_FACTORY)


def create(kind: str, **kwargs) -> PositionalEncoding:
    """Build a positional encoding by name, e.g. ``create("rope", head_dim=64)``."""
    cls = _FACTORY.get(kind)
    if cls is None:
        close = difflib.get_close_matches(str(kind), list(_FACTORY), n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"unknown positional encoding kind {kind!r}.{hint} Known kinds: {', '.join(list_pe())}")
    return cls(**kwargs)
