"""The positional-encoding contract.

A `PositionalEncoding` overrides only the hooks it uses; which ones it overrides says what kind it is:

    embed(x, pos)            -> x             add to token features          (APE, LayoutLM, PEG)
    rotate(q, k, pos)        -> (q, k)        rotate queries / keys           (RoPE family, HiRoPE, V2PE)
    bias(q, k, pos, scale)   -> [b|1, h|1, nq, nk] added to the scaled logits (ALiBi, T5, KERPLE, iRPE-q/k)
    bias_rows(q, k, pos, scale, start)
                             -> [b|1, h|1, c, nk] rows of that bias for a block of c queries (optional; lets the
                                attention chunk long sequences without ever holding the whole bias). Contract:
                                equals bias(q_all, k, pos, scale)[..., start - (nk - nq_all) + i, :] for the c
                                queries q at key indices start .. start + c - 1. The base class does not define
                                it: encodings without it get the full bias once, sliced per chunk
    bias_table(n, device)    -> [h|1, 2n - 1] float32, or None: the bias as a function of the key - query offset
                                alone, ``bias[h, i, j] = table[h, j - i + n - 1]`` for n queries and keys at token
                                positions 0..n-1 (optional; ALiBi, T5, KERPLE, FIRE, Sandwich).  The attention then
                                runs the fused Toeplitz kernel (`zoo.nn.toeplitz`): no ``[n, n]`` bias is built.
                                Contract: equals ``bias(q, k, None, scale)[0, :, i, j]``; None where the bias is not
                                Toeplitz for this ``n`` (e.g. causal FIRE beyond its threshold)
    value(attn, pos)         -> [b, h, nq, d]  added to the attention output, computed from the post-softmax
                                               weights (iRPE on values); forces the slow attention path

Tensor layout inside attention: q, k, v are ``[b, h, n, d]``.

Encodings whose bias depends only on the positions, the shapes and their own parameters (never on the values of q
and k) set ``bias_from_positions_only = True``.  A model whose blocks share one such encoding opens
``with pe.shared(pos):`` around its blocks; inside, the attention builds the bias once per forward and every layer
reuses it (autograd sums the layers' gradients into the encoding's parameters as before).

Every hook a subclass defines first checks its ``pos`` argument (`check_pos`): None or a `Positions` whose tensor
fields are tensors, so that a wrong type is a ``TypeError`` naming the argument, not an ``AttributeError`` from
inside the encoding.  The check reads types only (no device work).
"""
from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Iterator, Optional, Tuple

import torch
from torch import Tensor, nn

from ..errors import NotScriptableError
from ..positions import Positions

__all__ = ["PositionalEncoding", "ForwardMemo", "overrides", "check_pos", "no_autocast"]


def no_autocast(device: torch.device):
    """A region where autocast is off on ``device`` (angles and position tables in float32 whatever the autocast
    dtype); a no-op on a device without autocast (``meta``: a model built or traced there for its shapes)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()

# hook -> index of ``pos`` among its arguments after ``self``
_POS_ARG = {"embed": 1, "rotate": 2, "bias": 2, "bias_rows": 2, "value": 1}
_TENSOR_FIELDS = ("ids", "grid", "levels", "segments", "boxes", "mask")


def check_pos(pos: Any, by: str = "this encoding") -> None:
    """Raise ``TypeError`` unless ``pos`` is None or a `Positions` whose tensor fields (ids, grid, levels,
    segments, boxes, mask) are each None or a ``torch.Tensor``; ``by`` names the caller in the message."""
    if pos is None:
        return
    if not isinstance(pos, Positions):
        raise TypeError(f"{by}: pos must be a zoo.Positions (or None), got {type(pos).__name__}")
    for name in _TENSOR_FIELDS:
        v = getattr(pos, name)
        if v is not None and not isinstance(v, Tensor):
            raise TypeError(f"{by}: Positions.{name} must be a torch.Tensor, got {type(v).__name__}")


def _checks_pos(fn: Callable, index: int) -> Callable:
    @functools.wraps(fn)
    def hook(self, *args, **kwargs):
        check_pos(kwargs["pos"] if "pos" in kwargs else args[index] if len(args) > index else None,
                  type(self).__name__)
        return fn(self, *args, **kwargs)
    hook._checks_pos = True
    return hook


class ForwardMemo:
    """A one-slot memo that a model opens for one forward pass so that an encoding computed from the positions
    (a ``[b, h, n, n]`` bias, BROS's ``[b, n, n, d]`` box features) is built once and shared by every layer.

    ``with memo.scope(): ...`` -- inside, ``memo.get(pos, build, extra)`` builds once per ``Positions`` object
    (compared by identity) and ``extra`` (compared by equality: shapes, scale, dtype); outside, it builds every time
    (correct, only slower).  Nothing outlives the ``with`` block, so no stale value or autograd graph survives an
    optimiser step."""

    def __init__(self):
        self._active = False
        self._key: Any = None
        self._extra: Any = None
        self._value: Any = None

    @property
    def active(self) -> bool:
        return self._active

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        outer = (self._active, self._key, self._extra, self._value)
        self._active, self._key, self._extra, self._value = True, None, None, None
        try:
            yield
        finally:
            self._active, self._key, self._extra, self._value = outer

    def get(self, pos: Any, build: Callable[[], Any], extra: Any = None) -> Any:
        if not self._active:
            return build()
        if self._value is None or self._key is not pos or self._extra != extra:
            self._key, self._extra, self._value = pos, extra, build()
        return self._value


def refuse_torchscript(module: nn.Module) -> None:
    """What ``torch.jit.script`` meets in a zoo encoding or attention (their ``__prepare_scriptable__``): a clear
    refusal before any compiling. They work from Python objects (`Positions`, per-grid caches, kernels chosen in
    Python), which TorchScript cannot compile. The traced and exported forms work: torch.export,
    torch.onnx.export(dynamo=True), torch.compile, and torch.fx with timm's notrace lists."""
    raise NotScriptableError(
        f"torch.jit.script: {type(module).__name__} ({type(module).__module__}) is not TorchScript code: it works "
        f"from Python objects (Positions, per-grid caches, kernels chosen in Python). Use torch.export.export / "
        f"torch.onnx.export(..., dynamo=True) to deploy, torch.compile to speed up, or torch.fx (with timm's "
        f"get_notrace_modules / get_notrace_functions) to extract features")


class PositionalEncoding(nn.Module):
    """Base class. Subclasses override a subset of `embed`, `rotate`, `bias`, `value`."""

    def __prepare_scriptable__(self):
        refuse_torchscript(self)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for hook, index in _POS_ARG.items():                     # every hook checks its pos argument (`check_pos`)
            fn = cls.__dict__.get(hook)
            if callable(fn) and not getattr(fn, "_checks_pos", False):
                setattr(cls, hook, _checks_pos(fn, index))

    def embed(self, x: Tensor, pos: Optional[Positions]) -> Tensor:
        return x

    def rotate(self, q: Tensor, k: Tensor, pos: Optional[Positions]) -> Tuple[Tensor, Tensor]:
        return q, k

    def bias(self, q: Tensor, k: Tensor, pos: Optional[Positions], scale: float) -> Optional[Tensor]:
        return None

    def value(self, attn: Tensor, pos: Optional[Positions]) -> Optional[Tensor]:
        return None

    #: float32 values per (query, key) pair that ``bias_rows`` builds, all heads together (the bias itself and the
    #: temporaries autograd keeps); sizes the attention's query chunks.  None: about ``2 * num_heads``.
    bias_floats_per_pair: Optional[int] = None

    #: the bias is a function of the positions, the shapes and the encoding's parameters only (never of q / k
    #: values): inside ``with pe.shared(pos):`` `shared_bias` builds it once and every layer reuses it.
    bias_from_positions_only: bool = False

    # ---- one bias per forward ------------------------------------------------------------------------------
    @property
    def _forward_memo(self) -> ForwardMemo:
        memo = self.__dict__.get("_memo")
        if memo is None:
            memo = self.__dict__["_memo"] = ForwardMemo()
        return memo

    def shared(self, pos: Optional[Positions] = None):
        """Context manager for one forward of a model whose blocks share this encoding: inside it, what the
        encoding computes from the positions alone is built once (see ``bias_from_positions_only``)."""
        return self._forward_memo.scope()

    def shared_bias(self, q: Tensor, k: Tensor, pos: Optional[Positions], scale: float) -> Optional[Tensor]:
        """`bias`, built once per ``shared`` scope when ``bias_from_positions_only`` (keyed by the ``Positions``
        object, the query / key counts, ``scale``, device and dtype); otherwise a plain call."""
        if not self.bias_from_positions_only:
            return self.bias(q, k, pos, scale)
        extra = (q.shape[-2], k.shape[-2], float(scale), q.device, q.dtype, torch.is_grad_enabled())
        return self._forward_memo.get(pos, lambda: self.bias(q, k, pos, scale), extra)

    # ---- introspection ------------------------------------------------------------------------------------
    @property
    def has_embed(self) -> bool:
        return overrides(self, "embed")

    @property
    def has_rotate(self) -> bool:
        return overrides(self, "rotate")

    @property
    def has_bias(self) -> bool:
        return overrides(self, "bias")

    @property
    def has_bias_rows(self) -> bool:
        """True when `bias_rows` is implemented by the class that also defines `bias` (or a subclass of it): a
        subclass that changes `bias` without updating `bias_rows` loses the row form instead of returning rows of
        the parent's bias."""
        rows_cls, bias_cls = _defined_in(type(self), "bias_rows"), _defined_in(type(self), "bias")
        return rows_cls is not None and bias_cls is not None and issubclass(rows_cls, bias_cls)

    @property
    def has_bias_table(self) -> bool:
        """True when `bias_table` is implemented by the class that also defines `bias` (or a subclass of it), as
        `has_bias_rows`."""
        table_cls, bias_cls = _defined_in(type(self), "bias_table"), _defined_in(type(self), "bias")
        return table_cls is not None and bias_cls is not None and issubclass(table_cls, bias_cls)

    def shared_bias_table(self, n: int, pos: Optional[Positions], device) -> Optional[Tensor]:
        """`bias_table`, built once per ``shared`` scope (keyed like `shared_bias`)."""
        if not self.bias_from_positions_only:
            return self.bias_table(n, device)
        extra = ("table", n, torch.device(device), torch.is_grad_enabled())
        return self._forward_memo.get(pos, lambda: self.bias_table(n, device), extra)

    @property
    def needs_weights(self) -> bool:
        """True when the encoding reads the attention weights (then SDPA cannot be used)."""
        return overrides(self, "value")


def overrides(pe: nn.Module, hook: str) -> bool:
    """Whether ``pe`` implements ``hook`` itself rather than inheriting the identity from the base class."""
    impl = getattr(type(pe), hook, None)
    return impl is not None and impl is not getattr(PositionalEncoding, hook)


def _defined_in(cls: type, name: str) -> Optional[type]:
    """The class of ``cls``'s MRO whose body defines ``name``."""
    for c in cls.__mro__:
        if name in c.__dict__:
            return c
    return None
