"""`zoo bench`: the harness plugins register their benches with.

Speed and memory are measured as ratios against a baseline measured in the same run, never as absolute numbers
(`interleaved` alternates baseline and candidates so that machine drift hits both; `run_worker` runs each
measurement in a subprocess of its own so that a peak memory belongs to one model). Length extrapolation writes its
table and plot through `zoo.extrapolation`.

A plugin's bench module registers each suite it brings::

    register_bench("extrapolation", run, variant="mydomain",
                   options=[(("--steps",), dict(type=int, default=None, help="training steps per model"))],
                   defaults={"steps": 300})

``zoo bench <suite>`` then calls ``run(args)`` (an `argparse.Namespace`) and returns its exit code. ``options`` are
the suite's own command-line options (``add_argument`` arguments; an option several benches declare is added once,
by the first). A suite registered by several plugins has one ``variant`` each, chosen with ``--domain`` (default:
the variant registered with ``default=True``); ``defaults`` fill the options left unset (None) for that variant.
Generic suites (``zoo.bench.long``) take the models they build from the plugin that registers them.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from ..errors import ConfigError
from ..finetune.engine import _autocast as autocast
from ..finetune.engine import bf16_native
from ..finetune.engine import _resolve_device as resolve_device
from .speed import interleaved, parse_list, run_worker

__all__ = ["Bench", "register_bench", "list_benches", "get_bench", "run_bench", "add_bench_arguments",
           "resolve_device", "autocast", "bf16_native", "interleaved", "run_worker", "parse_list"]

Option = Tuple[Tuple[str, ...], Dict[str, Any]]


@dataclass
class Bench:
    """One registered suite (or one plugin's variant of a suite)."""
    suite: str
    run: Callable[[argparse.Namespace], int]
    variant: Optional[str] = None
    options: Sequence[Option] = ()
    defaults: Mapping[str, Any] = field(default_factory=dict)
    help: str = ""
    default: bool = False


_BENCHES: Dict[str, Dict[Optional[str], Bench]] = {}


def register_bench(suite: str, run: Callable[[argparse.Namespace], int], *, variant: Optional[str] = None,
                   options: Sequence[Option] = (), defaults: Optional[Mapping[str, Any]] = None, help: str = "",
                   default: bool = False) -> Bench:
    """Register ``zoo bench <suite>`` (see the module docstring); registering the same (suite, variant) again
    replaces it (a module imported twice)."""
    if not isinstance(suite, str) or not suite.isidentifier():
        raise ConfigError(f"bench suite must be a name such as 'long', got {suite!r}")
    bench = Bench(suite, run, variant, tuple(options), dict(defaults or {}), help, default)
    variants = _BENCHES.setdefault(suite, {})
    if (variant is None) != all(v is None for v in variants) and variants and variant not in variants:
        raise ConfigError(f"bench suite {suite!r} is registered {'with' if variant is None else 'without'} "
                          f"variants already; cannot add {variant!r}")
    variants[variant] = bench
    return bench


def _load() -> Dict[str, Dict[Optional[str], Bench]]:
    from ..plugins import import_benches
    from . import ddp
    if "ddp" not in _BENCHES:                 # the core's own suite: torchrun against one process
        ddp.register()
    import_benches()
    return _BENCHES


def list_benches() -> List[str]:
    """Every suite registered by a plugin's bench module."""
    return sorted(_load())


def get_bench(suite: str, variant: Optional[str] = None) -> Bench:
    """The bench of ``suite`` (its ``variant``, or the default one); unknown names are errors listing the known."""
    benches = _load()
    if suite not in benches:
        raise ConfigError(f"unknown bench suite {suite!r}; known: {', '.join(sorted(benches)) or 'none'}")
    variants = benches[suite]
    if None in variants:
        return variants[None]
    if variant is None:
        variant = next((v for v, b in variants.items() if b.default), sorted(variants)[0])
    if variant not in variants:
        raise ConfigError(f"zoo bench {suite} --domain {variant}: not implemented; known: "
                          f"{', '.join(sorted(variants))}")
    return variants[variant]


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """The suite argument, the options every suite shares, ``--domain`` and each registered bench's options."""
    benches = _load()
    parser.add_argument("suite", choices=sorted(benches))
    parser.add_argument("--batch-size", type=int, default=None, help="default: the suite's")
    parser.add_argument("--iters", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--models", default=None, help="comma-separated zoo models (default: the suite's list)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    with_variants = {s: sorted(v) for s, v in benches.items() if None not in v}
    if with_variants:
        parser.add_argument("--domain", default=None, help="; ".join(
            f"zoo bench {s}: one of {', '.join(v)} (default {get_bench(s).variant})" for s, v in with_variants.items()))
    seen = {a.dest for a in parser._actions}
    for suite in sorted(benches):
        for variant, bench in sorted(benches[suite].items(), key=lambda kv: str(kv[0])):
            new = [(flags, kw) for flags, kw in bench.options if kw.get("dest", flags[0].lstrip("-")
                                                                         .replace("-", "_")) not in seen]
            if not new:
                continue
            title = f"zoo bench {suite}" + (f" --domain {variant}" if variant else "") + (
                f": {bench.help}" if bench.help else "")
            group = parser.add_argument_group(title)
            for flags, kw in new:
                action = group.add_argument(*flags, **kw)
                seen.add(action.dest)


def run_bench(suite: str, args: argparse.Namespace) -> int:
    """Run ``zoo bench <suite>`` with the parsed ``args`` (unset options take the variant's defaults)."""
    bench = get_bench(suite, getattr(args, "domain", None))
    for key, value in bench.defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    return bench.run(args)
