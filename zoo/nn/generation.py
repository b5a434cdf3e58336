"""Autoregressive decoding shared by every decoder LM: argument checks (input ids, length, Positions against a KV
cache), sampling and the decode loop.

A model supplies ``step(tokens_or_new, pos, cache) -> logits [b, n, vocab]`` (its forward) and a rule that extends
the Positions as tokens are appended; `decode` does the rest, with or without a KV cache.
"""
from __future__ import annotations

from typing import Callable, List, Optional

import torch
from torch import Tensor

from ..positions import Positions

__all__ = ["check_input_ids", "check_prompt", "check_seq_len", "check_positions", "check_generate_args",
           "sample_next", "decode"]


def check_input_ids(input_ids, vocab_size: Optional[int] = None) -> None:
    """Raise ``ValueError`` unless ``input_ids`` is an integer ``[b, n]`` tensor with at least one token (``b, n >= 1``)
    and, when ``vocab_size`` is given, every id in ``0 .. vocab_size - 1`` (the message names the first offending
    id).  The range check reads one flag back from the device."""
    if not isinstance(input_ids, Tensor) or input_ids.ndim != 2 or input_ids.is_floating_point() \
            or input_ids.is_complex() or input_ids.dtype == torch.bool:
        got = (f"{input_ids.dtype} {tuple(input_ids.shape)}" if isinstance(input_ids, Tensor)
               else type(input_ids).__name__)
        raise ValueError(f"input_ids must be an int [b, n] tensor, got {got}")
    if input_ids.numel() == 0:
        raise ValueError(f"input_ids has no tokens (shape {tuple(input_ids.shape)}): a model needs at least one "
                         f"sequence of at least one token")
    if vocab_size is not None:
        bad = (input_ids < 0) | (input_ids >= vocab_size)                        # [b, n]
        if bool(bad.any()):
            first = int(input_ids[bad][0])
            hint = ": was the model built with the tokenizer's vocab_size?" if first >= vocab_size else ""
            raise ValueError(f"input_ids holds token id {first}, outside 0..{vocab_size - 1} "
                             f"(vocab_size={vocab_size}){hint}")


def check_seq_len(n: int, past: int, max_seq_len: int, allow_longer: bool, note: str = "") -> None:
    """Raise unless ``past`` cached + ``n`` new tokens fit in ``max_seq_len`` (or ``allow_longer`` is set); ``note``
    is appended to the message."""
    nk = past + n
    if nk > max_seq_len and not allow_longer:
        raise ValueError(f"{nk} tokens ({past} cached + {n} new) exceed max_seq_len={max_seq_len}; set "
                         f"allow_longer=True (argument or attribute) to run longer sequences" + note)


def check_positions(pos, needs, b: int, nk: int, past: int, model: str, hint: str) -> None:
    """Raise unless ``pos`` is a `Positions` with every field of ``needs`` and each token field describes all ``nk``
    keys (``past`` cached + new) with batch 1 or ``b``.  ``model`` names the model in the message (e.g.
    ``"CodeLM(pe='rope')"``), ``hint`` (appended) says how to build the missing fields."""
    if not isinstance(pos, Positions):
        raise ValueError(f"pos must be a zoo.Positions, got {type(pos).__name__}")
    missing = [f for f in needs if getattr(pos, f) is None]
    if missing:
        raise ValueError(f"{model} needs Positions.{', '.join(missing)}, which the input does not provide{hint}")
    for f, axis in Positions._TOKEN_AXES:
        t = getattr(pos, f)
        if t is None:
            continue
        if t.shape[axis] != nk:
            raise ValueError(f"Positions.{f} describes {t.shape[axis]} tokens but the model sees {nk} "
                             f"({past} cached + {nk - past} new): pos must describe all keys, past and new")
        if t.ndim == 1 - axis and t.shape[0] not in (1, b):                    # batched field
            raise ValueError(f"Positions.{f} has batch {t.shape[0]}, input_ids has {b}")


def check_generate_args(max_new_tokens, temperature, top_k) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative int, got {max_new_tokens!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature >= 0:
        raise ValueError(f"temperature must be a number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k <= 0):
        raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")


def check_prompt(input_ids, vocab_size: Optional[int] = None) -> None:
    """`check_input_ids` for a prompt to continue; an empty prompt gets a message saying what to pass instead."""
    if isinstance(input_ids, Tensor) and input_ids.ndim == 2 and input_ids.shape[1] == 0:
        raise ValueError(f"input_ids has no tokens (shape {tuple(input_ids.shape)}): generate() needs a prompt of at "
                         f"least one token (e.g. the <bos> id)")
    check_input_ids(input_ids, vocab_size)


def sample_next(logits: Tensor, temperature: float, top_k: Optional[int] = None,
                generator: Optional[torch.Generator] = None) -> Tensor:
    """``[b, vocab]`` logits -> ``[b, 1]`` token ids: argmax when ``temperature == 0``, else a draw from
    ``softmax(logits / temperature)`` restricted to the ``top_k`` most likely tokens."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]                        # [b, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)


@torch.no_grad()
def decode(step: Callable[..., Tensor], tokens: Tensor, pos: Positions,
           extend: Callable[[Tensor, Positions], Positions], max_new_tokens: int, temperature: float = 1.0,
           top_k: Optional[int] = None, cache: Optional[List] = None,
           generator: Optional[torch.Generator] = None) -> Tensor:
    """Append ``max_new_tokens`` tokens to ``tokens [b, n]``; returns ``[b, n + max_new_tokens]``.

    Args:
        step: the model's forward ``step(input_ids, pos, cache) -> logits [b, n, vocab]``.
        pos: Positions of the prompt.
        extend: ``extend(tokens [b, m + 1], pos of the first m) -> Positions of all m + 1``.
        cache: a fresh KV cache (one per block) to decode one token at a time; None re-runs the whole sequence.
    """
    check_generate_args(max_new_tokens, temperature, top_k)
    check_prompt(tokens)
    if max_new_tokens == 0:
        return tokens
    logits = step(tokens, pos, cache)[:, -1]                                     # [b, vocab]
    for i in range(max_new_tokens):
        nxt = sample_next(logits, temperature, top_k, generator)                 # [b, 1]
        tokens = torch.cat([tokens, nxt.to(tokens.dtype)], dim=1)
        if i == max_new_tokens - 1:
            break
        pos = extend(tokens, pos)
        logits = (step(nxt, pos, cache) if cache is not None else step(tokens, pos, None))[:, -1]
    return tokens
