"""Attention, blocks and shared layers (torch only)."""
from .attention import Attention, KVCache, build_attn_mask
from .block import Block, shared_encodings
from .layers import DropPath, LayerScale, Mlp
from .linear_attention import LinearAttention
from .transformer import DecoderLM, TransformerEncoder

__all__ = ["Attention", "KVCache", "Block", "shared_encodings", "build_attn_mask", "DropPath", "LayerScale", "Mlp", "LinearAttention",
           "TransformerEncoder", "DecoderLM"]
