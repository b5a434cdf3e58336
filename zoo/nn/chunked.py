"""Memory-bounded softmax attention for long sequences with a logit bias: query chunks, each recomputed in backward.

The fused CPU/GPU kernels never hold ``[b, h, nq, nk]`` logits, but a float bias does: SDPA saves its ``attn_mask``
for backward and, when the bias needs a gradient (KERPLE, FIRE, T5), the unfused math keeps the bias, the logits and
the softmax weights, three ``[b, h, nq, nk]`` float32 tensors per layer (4 GiB each at 16k tokens and 4 heads).
Here the queries are split into blocks of ``c`` rows::

    q [b, h, nq, d] --split--> q_c [b, h, c, d] --(bias rows [b|1, h, c, nk] + padding/causal rows)--> softmax @ v
                                  one chunk at a time, each wrapped in torch.utils.checkpoint (use_reentrant=False)
    out[..., s:e, :] = out_c                                                     # [b, h, nq, d], one buffer

Autograd saves only what a chunk was called with (views of q, k, v); the backward of a chunk reruns its forward, so
at any time one chunk's ``[b, h, c, nk]`` tensors are alive, never ``[h, nq, nk]``.  The price is one extra forward
of the attention (not of the projections) under a gradient.  Chunk boundaries do not change the result: every row
of a softmax is computed whole, against all keys.

Biases come from `PositionalEncoding.bias_rows` (only the chunk's rows are ever built) when the encoding has it;
otherwise the attention computes the full bias once and passes row slices (one ``[b|1, h, nq, nk]`` bias held per
layer).  This module is torch-only and knows nothing of encodings: `zoo.nn.Attention` supplies the per-chunk
function.
"""
from __future__ import annotations

from typing import Callable, Iterator, Optional, Tuple

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

__all__ = ["DEFAULT_MAX_BIAS_BYTES", "DEFAULT_CHUNK_BYTES", "query_blocks", "plan_chunk_rows",
           "biased_gemm_attention", "run_query_chunks"]

#: Attention chunks the bias path automatically when ``b * h * nq * nk`` float32 values exceed this many bytes
#: (256 MiB: 4k tokens x 4 heads stay on today's unchunked path; 8k and more are chunked).
DEFAULT_MAX_BIAS_BYTES = 256 * 2 ** 20
#: Target working set of one chunk (its bias rows, logits, weights and their temporaries).
DEFAULT_CHUNK_BYTES = 128 * 2 ** 20


def query_blocks(nq: int, chunk: int) -> Iterator[Tuple[int, int]]:
    """``(start, end)`` of consecutive query blocks of ``chunk`` rows (the last one may be shorter)."""
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk <= 0:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    for s in range(0, nq, chunk):
        yield s, min(s + chunk, nq)


def plan_chunk_rows(batch: int, num_heads: int, nq: int, nk: int, floats_per_pair: Optional[int] = None,
                    max_bias_bytes: Optional[int] = DEFAULT_MAX_BIAS_BYTES,
                    chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Optional[int]:
    """Rows per query chunk for an automatic choice, or None when the unchunked path is small enough.

    Chunking starts when the ``[batch, num_heads, nq, nk]`` float32 bias/logits would exceed ``max_bias_bytes``
    (None: never).  A chunk then holds about ``chunk_bytes``: ``3 * num_heads`` float32 values per (query, key) pair
    for the mask, logits and weights plus ``floats_per_pair`` for the encoding's bias rows (default
    ``2 * num_heads``)."""
    if max_bias_bytes is None or batch * num_heads * nq * nk * 4 <= max_bias_bytes:
        return None
    per_pair = 3 * num_heads + (2 * num_heads if floats_per_pair is None else int(floats_per_pair))
    rows = chunk_bytes // max(1, batch * nk * 4 * per_pair)
    return int(max(1, min(nq, rows)))


def biased_gemm_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float,
                          dropout: Optional[Callable[[Tensor], Tensor]] = None) -> Tensor:
    """``softmax(q k^T * scale + mask) @ v`` on q ``[b, h, nq, d]``, k/v ``[b, h, nk, d]``, mask broadcastable to
    ``[b, h, nq, nk]``, with the mask added inside the GEMM (``baddbmm``): on the CPU this saves a pass over the
    logits compared with SDPA's unfused math kernel, which is what runs when the mask needs a gradient."""
    b, h, nq, d = q.shape
    nk = k.shape[-2]
    mask = mask.expand(b, h, nq, nk).reshape(b * h, nq, nk)                      # [b*h, nq, nk]
    logits = torch.baddbmm(mask, q.reshape(b * h, nq, d), k.reshape(b * h, nk, d).transpose(1, 2), alpha=scale)
    weights = logits.softmax(dim=-1)
    if dropout is not None:
        weights = dropout(weights)
    return torch.bmm(weights.to(v.dtype), v.reshape(b * h, nk, -1)).view(b, h, nq, -1)


def run_query_chunks(fn: Callable[[Tensor, Tensor, Tensor, int, int], Tensor], q: Tensor, k: Tensor, v: Tensor,
                     chunk: int, recompute: bool, preserve_rng_state: bool = False) -> Tensor:
    """``cat([fn(q[..., s:e, :], k, v, s, e) for each query block], dim=-2)``, written block by block into one
    output buffer.

    ``fn`` computes the attention output ``[b, h, e - s, d]`` of one block of queries against all keys.  With
    ``recompute`` every call is wrapped in ``torch.utils.checkpoint`` (non-reentrant, so parameters that ``fn``
    reaches through closures, e.g. a learnable bias, get their gradients): nothing inside a block is saved for
    backward, the block is recomputed there.  ``preserve_rng_state``: replay the RNG (attention dropout)."""
    nq = q.shape[-2]
    out: Optional[Tensor] = None
    for s, e in query_blocks(nq, chunk):
        qc = q[..., s:e, :]                                                      # [b, h, c, d]
        if recompute:
            oc = checkpoint(fn, qc, k, v, s, e, use_reentrant=False, preserve_rng_state=preserve_rng_state)
        else:
            oc = fn(qc, k, v, s, e)
        if out is None:
            if e == nq:
                return oc
            out = oc.new_empty(oc.shape[:-2] + (nq, oc.shape[-1]))               # [b, h, nq, d]
        # written into one buffer, not kept per chunk for a cat: a small tensor surviving each chunk would sit in
        # the hole the chunk's big temporaries left and fragment the C heap (the RSS then grows by a chunk per chunk)
        out[..., s:e, :] = oc
    return out
