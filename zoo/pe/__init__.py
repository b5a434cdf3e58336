"""Positional encodings: one file per family, torch only.

Every encoding registers itself in its own file (`zoo.pe.registry.register_pe`); importing ``zoo.pe`` imports every
module of this package, so a new file registers without an edit here.  ``zoo.pe.create(spec, **kw)`` builds by name
or from ``{"name": ..., **kwargs}``; ``zoo.pe.build(spec, dim=..., head_dim=..., ...)`` builds for a model's
geometry; ``zoo.pe.list_pe(pattern, positions)`` and ``zoo.pe.info(name)`` describe what is registered.
"""
from __future__ import annotations

import importlib
import pkgutil

from .base import PositionalEncoding, overrides
from .registry import (GEOMETRY, HOOKS, POSITION_KINDS, PEConfigError, PEInfo, build, create, example_kwargs, info,
                       list_pe, register_pe, unregister_pe)
from .relative import query_key_positions

__all__ = ["PositionalEncoding", "overrides", "create", "build", "register_pe", "unregister_pe", "list_pe", "info",
           "example_kwargs", "PEInfo", "PEConfigError", "POSITION_KINDS", "GEOMETRY", "HOOKS"]

# ---- classic absolute / rotary / bias encodings --------------------------------------------------------------
from .alibi import ALiBi, InterpolatedALiBi, alibi_bias, alibi_interpolation_scale, alibi_slopes
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
from .rope_scaling import (ROPE_TYPES, ScaledRoPE, rope_dynamic, rope_frequencies, rope_linear, rope_llama3,
                           rope_longrope, rope_yarn, rotary_dim)
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
    "p_rope_inv_freq", "ScaledRoPE", "rope_frequencies", "rotary_dim", "ROPE_TYPES", "rope_linear", "rope_dynamic",
    "rope_yarn", "rope_longrope", "rope_llama3",
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

# ---- every module of the package registers its encodings -------------------------------------------------------
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
del _module
