"""LongRoPE's evolutionary search for per-pair RoPE rescale factors (Ding et al., LongRoPE: Extending LLM Context
Window Beyond 2 Million Tokens, ICML 2024, arXiv 2402.13753; reference: microsoft/LongRoPE, ``evolution/``).

A candidate is a vector ``lambda [r/2]`` of rescale factors, one per rotary pair ``t`` (highest frequency first): pair
``t`` rotates with ``inv_t / lambda_t`` beyond the original length -- exactly the ``long_factor`` of HF's "longrope"
and of `zoo.pe.rope_longrope`.  The search minimises a user objective (the paper: perplexity of the model with these
factors on a few held-out documents of the target length) under the paper's constraints::

    1 <= lambda_0 <= lambda_1 <= ... <= lambda_{r/2-1} <= max_factor       (monotonically non-decreasing:
                                                                           lower frequency -> no smaller factor)

    population P  = seeds (PI, NTK, YaRN)  +  mutations of them           (paper Sec. 3.2 "optimized initial
                                                                           population"; official: one seed + P-1)
    generation g  : parents = the best k of the population                (elitist: best-so-far never worsens)
                    + N1 mutations of random parents
                    + N2 crossovers of two distinct random parents (a mutation of the better one when it fails)
    result        = the best candidate of the last population

What follows the official code (``evolution/algorithms/genetic_base.py``, ``dim_mono.py``, ``search.py`` at
microsoft/LongRoPE c9e56aa) and what departs from it, on purpose:

- Defaults ``population=64, generations=40, parents=32, mutations=16, crossovers=16, max_crossover_try=20,
  step=0.01`` are ``evolution/default_hyper_params/dim_mono.json``; the paper's Algorithm 1 / Table 4 give the same
  P, N1, N2, T, k, step and p = 0.3.
- Mutation (``DimMonoGeneticAlgorithm.mutate``): each pair, with probability ``mutation_prob`` (0.3), takes a value
  drawn uniformly from the grid ``lo, lo + step, ...`` up to ``hi``, where ``lo`` / ``hi`` are the current factors of
  its neighbours (``1.0`` below the first pair, ``max_factor`` above the last); the pass repeats until the vector is
  new (never evaluated).  Here the grid stops at ``hi`` inclusive for every pair (official: exclusive for the first
  pair, and up to ``hi + step`` for the others, the overshoot then being rejected by the monotonic check), so every
  mutation is monotonic and in bounds by construction; after ``_MAX_MUTATION_PASSES`` passes without a new vector
  (a tiny, exhausted search space) the last one is kept and served from the cache (official: loops forever).
- Crossover (``DimMonoGeneticAlgorithm.crossover``): start from the better parent; up to ``max_crossover_try``
  sweeps over the pairs, each pair with probability 0.3 takes the other parent's value with probability 0.5 and the
  first new monotonic vector is returned; identical parents or no success -> a mutation of the better parent.
- Upper bound: the official mutation's grid ends at ``1 + scale`` (``np.arange(1.0, 1.0 + scale + step, step)``),
  the paper's Table 4 says ``1.25 * scale``: ``max_factor`` defaults to the official ``1 + scale``.
- Seeds: the official search seeds ONE vector (a YaRN-shaped one, `initial_factors` kind ``"yarn_longrope"``, or a
  file) and mutates it P-1 times; the paper seeds PI, NTK and YaRN and mutates those.  The default here is the
  paper's (``seeds=("pi", "ntk", "yarn")``, mutated round-robin); ``seeds=("yarn_longrope",)`` is the official one.
- The official code keeps a list of every evaluated individual and refuses to produce one twice; here that list is a
  cache keyed by the factors rounded to 1e-9, which also answers repeated candidates without calling the objective.
- Not searched here: the paper's retained start tokens ``n_hat in {0, 1, 2, 4, ..., 256}`` (the first ``n_hat``
  positions keep the original RoPE).  The released search (``dim_mono``, ``dim_piece_mono``) does not search it
  either; an earlier commit of the repository (``dim_mono_n``) tried every ``n_hat`` of a fixed list on the top
  parents.  HF's "longrope" and `zoo.pe.rope_longrope` have no such parameter, so a searched ``n_hat`` could not be
  loaded.  Neither is ``dim_piece_mono`` (two searched pair indices: pairs up to the first kept at 1, pairs past the
  second set to ``scale``), nor the short factors (saved as ones), nor the attention temperature.

`SearchResult.save` writes JSON atomically; `load_factors` returns the keywords of a ``rope_longrope`` spec::

    zoo.pe.create("rope_longrope", head_dim=64, **load_factors("factors.json", head_dim=64))
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import ConfigError
from .io import atomic_write_text

__all__ = ["INITIAL_KINDS", "initial_factors", "evolution_search", "SearchResult", "load_factors", "check_factors"]

INITIAL_KINDS = ("pi", "ntk", "yarn", "yarn_longrope")
_MAX_MUTATION_PASSES = 200
_KEY_DECIMALS = 9
_FORMAT = "longrope-factors/1"


# ---- checks ---------------------------------------------------------------------------------------------------------
def _is_number(x) -> bool:
    return not isinstance(x, bool) and isinstance(x, (int, float, np.floating, np.integer)) and math.isfinite(x)


def _positive_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"longrope search: {name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _head_dim(head_dim) -> int:
    head_dim = _positive_int(head_dim, "head_dim", 2)
    if head_dim % 2:
        raise ConfigError(f"longrope search: head_dim (the rotary dim) must be even, got {head_dim}")
    return head_dim


def _scale(scale) -> float:
    if not _is_number(scale) or scale < 1:
        raise ConfigError(f"longrope search: scale (target length / original length) must be a number >= 1, "
                          f"got {scale!r}")
    return float(scale)


def check_factors(factors, length: Optional[int] = None, max_factor: Optional[float] = None,
                  where: str = "factors") -> List[float]:
    """``factors`` as a list of floats, checked: finite numbers, ``>= 1``, non-decreasing, of ``length`` (if given)
    and ``<= max_factor`` (if given).  Raises `ConfigError` that starts with ``where``."""
    if isinstance(factors, np.ndarray):
        factors = factors.tolist()
    if not isinstance(factors, (list, tuple)) or not factors:
        raise ConfigError(f"{where}: expected a non-empty list of numbers, got {type(factors).__name__}")
    bad = [i for i, x in enumerate(factors) if not _is_number(x)]
    if bad:
        raise ConfigError(f"{where}: entry {bad[0]} is {factors[bad[0]]!r}, not a finite number")
    out = [float(x) for x in factors]
    if length is not None and len(out) != length:
        raise ConfigError(f"{where}: {len(out)} factors, expected {length} (one per rotary pair, head_dim / 2)")
    low = [i for i, x in enumerate(out) if x < 1]
    if low:
        raise ConfigError(f"{where}: factor {low[0]} is {out[low[0]]:g} < 1 (a factor below 1 would speed the "
                          f"rotation up, outside LongRoPE's search space)")
    down = [i for i in range(1, len(out)) if out[i] < out[i - 1]]
    if down:
        i = down[0]
        raise ConfigError(f"{where}: factors must be non-decreasing (lower frequency -> no smaller factor), but "
                          f"factor {i} ({out[i]:g}) < factor {i - 1} ({out[i - 1]:g})")
    if max_factor is not None and out[-1] > max_factor + 1e-9:
        raise ConfigError(f"{where}: factor {len(out) - 1} is {out[-1]:g} > max_factor {max_factor:g}")
    return out


# ---- seeds ----------------------------------------------------------------------------------------------------------
def _yarn_ramp(r: int, base: float, original: float, beta_fast: float, beta_slow: float) -> np.ndarray:
    """YaRN's per-pair ramp ``[r/2]``: 0 = keep the frequency, 1 = interpolate (jquesnelle/yarn, HF truncate=True)."""
    def pair_with_turns(turns: float) -> float:
        return r * math.log(original / (turns * 2 * math.pi)) / (2 * math.log(base))

    low, high = math.floor(pair_with_turns(beta_fast)), math.ceil(pair_with_turns(beta_slow))
    low, high = max(low, 0), min(high, r - 1)
    if low == high:
        high += 0.001
    return np.clip((np.arange(r // 2, dtype=np.float64) - low) / (high - low), 0.0, 1.0)


def initial_factors(head_dim: int, scale: float, kind: str, original_max_position_embeddings: Optional[int] = None,
                    base: float = 10000.0, beta_fast: float = 32.0, beta_slow: float = 1.0) -> List[float]:
    """The rescale factors ``lambda_t = inv_t / inv'_t`` (``t = 0 .. head_dim/2 - 1``) a known extension implies.

    kind:
        ``"pi"``   ``lambda_t = s``                                  (Chen et al., arXiv 2306.15595)
        ``"ntk"``  ``lambda_t = s^(2t / (d - 2))``: NTK-aware base ``b' = b * s^(d / (d - 2))``
                                                                    (bloc97; YaRN paper eq. 17, arXiv 2309.00071)
        ``"yarn"`` ``lambda_t = 1 / ((1 - ramp_t) + ramp_t / s)``: YaRN's blend of ``inv_t`` and ``inv_t / s``
                   (the frequencies of HF's "yarn" / `zoo.pe.rope_yarn`, without its attention factor)
        ``"yarn_longrope"`` ``lambda_t = (1 - ramp_t) + ramp_t * s``: the seed of the official search
                   (``evolution/search.py``: a linear blend of the *factors* 1 and ``s`` by the same ramp)

    ``ramp_t`` is YaRN's ramp over the pairs that turn between ``beta_fast`` and ``beta_slow`` times over
    ``original_max_position_embeddings`` (official search: 32 / 1, Mistral 128 / 2); the yarn kinds need it.
    """
    d = _head_dim(head_dim)
    s = _scale(scale)
    h = d // 2
    if kind == "pi":
        return [s] * h
    if kind == "ntk":
        if d <= 2:
            raise ConfigError(f"initial_factors: 'ntk' needs head_dim > 2 (its exponent is d / (d - 2)), got {d}")
        return [float(s ** (2 * t / (d - 2))) for t in range(h)]
    if kind in ("yarn", "yarn_longrope"):
        if not _is_number(original_max_position_embeddings) or original_max_position_embeddings <= 0:
            raise ConfigError(f"initial_factors: {kind!r} needs original_max_position_embeddings (the pretraining "
                              f"length), got {original_max_position_embeddings!r}")
        if not _is_number(base) or base <= 1:
            raise ConfigError(f"initial_factors: base must be a number > 1, got {base!r}")
        if not (_is_number(beta_fast) and _is_number(beta_slow) and 0 < beta_slow <= beta_fast):
            raise ConfigError(f"initial_factors: need 0 < beta_slow <= beta_fast, got {beta_slow!r}, {beta_fast!r}")
        ramp = _yarn_ramp(d, float(base), float(original_max_position_embeddings), beta_fast, beta_slow)
        if kind == "yarn":
            return (1.0 / ((1.0 - ramp) + ramp / s)).tolist()
        return ((1.0 - ramp) + ramp * s).tolist()
    raise ConfigError(f"initial_factors: unknown kind {kind!r}; expected one of {INITIAL_KINDS}")


# ---- result ---------------------------------------------------------------------------------------------------------
def _finite_or_none(x: float) -> Optional[float]:
    return float(x) if math.isfinite(x) else None


@dataclass
class SearchResult:
    """What `evolution_search` found.

    Attributes:
        factors: the best ``long_factor`` ``[head_dim / 2]``.
        value: its objective value.
        history: one dict per generation (0 = the initial population): ``generation``, ``best`` (best value so far),
            ``evaluations`` (objective calls so far).
        evaluations: objective calls; cache_hits: candidates answered from the cache instead.
    """

    factors: List[float]
    value: float
    head_dim: int
    scale: float
    original_max_position_embeddings: int
    history: List[Dict[str, Any]] = field(default_factory=list)
    evaluations: int = 0
    cache_hits: int = 0
    seed: Optional[int] = None

    def spec(self) -> Dict[str, Any]:
        """Keywords of a ``rope_longrope`` spec (``head_dim`` comes from the model)."""
        return {"long_factor": list(self.factors), "short_factor": [1.0] * len(self.factors),
                "original_max_position_embeddings": self.original_max_position_embeddings, "factor": self.scale}

    def save(self, path: Union[str, Path]) -> Path:
        """Write the result as JSON, atomically (`load_factors` reads it back)."""
        data = {
            "format": _FORMAT,
            "long_factor": list(self.factors),
            "short_factor": [1.0] * len(self.factors),
            "original_max_position_embeddings": self.original_max_position_embeddings,
            "scale": self.scale,
            "head_dim": self.head_dim,
            "objective": _finite_or_none(self.value),
            "evaluations": self.evaluations,
            "seed": self.seed,
            "history": [{**h, "best": _finite_or_none(h["best"])} for h in self.history],
        }
        return atomic_write_text(path, json.dumps(data, indent=1, allow_nan=False) + "\n")


def load_factors(path: Union[str, Path], head_dim: Optional[int] = None) -> Dict[str, Any]:
    """Read a file written by `SearchResult.save`; returns the ``rope_longrope`` keywords ``long_factor``,
    ``short_factor``, ``original_max_position_embeddings`` and ``factor`` (the saved ``scale``).

    Raises `ConfigError` naming the file and the key for a missing or unreadable file, a missing key, factors that
    are not numbers, < 1, decreasing, or not ``head_dim / 2`` long (when ``head_dim`` is given)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"LongRoPE factors file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"LongRoPE factors file {str(path)!r} cannot be read: {e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"LongRoPE factors file {str(path)!r} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"LongRoPE factors file {str(path)!r}: expected a JSON object, got {type(data).__name__}")
    for key in ("long_factor", "original_max_position_embeddings", "scale"):
        if key not in data:
            raise ConfigError(f"LongRoPE factors file {str(path)!r} has no key {key!r}")
    saved_dim = data.get("head_dim")
    if saved_dim is not None and head_dim is not None and saved_dim != head_dim:
        raise ConfigError(f"LongRoPE factors file {str(path)!r}: key 'head_dim' is {saved_dim!r}, but head_dim="
                          f"{head_dim} was asked for")
    length = None if head_dim is None else _head_dim(head_dim) // 2
    if length is None and isinstance(saved_dim, int) and not isinstance(saved_dim, bool) and saved_dim > 0:
        length = saved_dim // 2
    long_factor = check_factors(data["long_factor"], length, where=f"LongRoPE factors file {str(path)!r}, key "
                                                                   f"'long_factor'")
    short = data.get("short_factor")
    short_factor = [1.0] * len(long_factor) if short is None else check_factors(
        short, len(long_factor), where=f"LongRoPE factors file {str(path)!r}, key 'short_factor'")
    omp = data["original_max_position_embeddings"]
    if isinstance(omp, bool) or not isinstance(omp, int) or omp <= 0:
        raise ConfigError(f"LongRoPE factors file {str(path)!r}, key 'original_max_position_embeddings': expected a "
                          f"positive int, got {omp!r}")
    scale = data["scale"]
    if not _is_number(scale) or scale < 1:
        raise ConfigError(f"LongRoPE factors file {str(path)!r}, key 'scale': expected a number >= 1, got {scale!r}")
    return {"long_factor": long_factor, "short_factor": short_factor, "original_max_position_embeddings": omp,
            "factor": float(scale)}


# ---- the search -----------------------------------------------------------------------------------------------------
Candidate = Tuple[np.ndarray, float]


class _Search:
    """State of one search: the random stream, the cache of evaluated candidates and the operators."""

    def __init__(self, objective, h: int, max_factor: float, step: float, mutation_prob: float,
                 crossover_prob: float, max_crossover_try: int, seed: Optional[int]):
        self.objective, self.h, self.max_factor, self.step = objective, h, max_factor, step
        self.mutation_prob, self.crossover_prob, self.max_crossover_try = mutation_prob, crossover_prob, \
            max_crossover_try
        self.rng = np.random.default_rng(seed)
        self.cache: Dict[Tuple[float, ...], float] = {}
        self.hits = 0

    @staticmethod
    def key(f: np.ndarray) -> Tuple[float, ...]:
        return tuple(round(float(x), _KEY_DECIMALS) for x in f)

    def evaluate(self, f: np.ndarray) -> Candidate:
        key = self.key(f)
        if key in self.cache:
            self.hits += 1
            return f, self.cache[key]
        value = self.objective([float(x) for x in f])
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            try:
                value = value.item()                                      # a 0-d tensor or array
            except (AttributeError, ValueError, RuntimeError):
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise ConfigError(f"longrope search: the objective must return a number (lower is better), got "
                              f"{value!r}")
        value = float(value)
        value = math.inf if math.isnan(value) else value                  # a diverged candidate ranks last
        self.cache[key] = value
        return f, value

    def mutate(self, parent: np.ndarray) -> Candidate:
        # DimMonoGeneticAlgorithm.mutate: each pair, with probability p, is redrawn from the step grid between its
        # neighbours; repeat until the vector has not been evaluated yet
        f = parent.copy()
        h, step = self.h, self.step
        for _ in range(_MAX_MUTATION_PASSES):
            for t in range(h):
                if self.rng.random() < self.mutation_prob:
                    lo = 1.0 if t == 0 else f[t - 1]
                    hi = self.max_factor if t == h - 1 else f[t + 1]
                    n = int(math.floor((hi - lo) / step + 1e-9)) + 1
                    if n > 0:
                        f[t] = min(max(round(lo + step * int(self.rng.integers(n)), 10), lo), hi)
            if self.key(f) not in self.cache:
                break
        return self.evaluate(f)

    def crossover(self, better: np.ndarray, other: np.ndarray) -> Optional[Candidate]:
        # DimMonoGeneticAlgorithm.crossover: from the better parent, each pair with probability p may take the other
        # parent's value (probability 1/2); the first new monotonic vector wins
        if np.allclose(better, other):
            return None
        f = better.copy()
        for _ in range(self.max_crossover_try):
            for t in range(self.h):
                if self.rng.random() < self.crossover_prob:
                    if self.rng.random() < 0.5:
                        f[t] = other[t]
                    if self.key(f) in self.cache or np.any(np.diff(f) < 0):
                        continue
                    return self.evaluate(f.copy())
        return None


def _sorted(population: List[Candidate]) -> List[Candidate]:
    return sorted(population, key=lambda c: c[1])                         # stable: ties keep their order


def evolution_search(objective: Callable[[List[float]], float], head_dim: int, scale: float, *,
                     original_max_position_embeddings: int,
                     seeds: Sequence[Union[str, Sequence[float]]] = ("pi", "ntk", "yarn"),
                     population: int = 64, generations: int = 40, parents: int = 32, mutations: int = 16,
                     crossovers: int = 16, mutation_prob: float = 0.3, crossover_prob: float = 0.3,
                     max_crossover_try: int = 20, step: float = 0.01, max_factor: Optional[float] = None,
                     base: float = 10000.0, beta_fast: float = 32.0, beta_slow: float = 1.0,
                     seed: Optional[int] = 0, progress: bool = True) -> SearchResult:
    """LongRoPE's evolution search (see the module docstring) for the ``long_factor`` of ``head_dim`` rotary channels.

    Args:
        objective: ``objective(factors: list[float]) -> float``, lower is better (LongRoPE: perplexity at the target
            length of the model with ``pe={"name": "rope_longrope", "long_factor": factors, ...}``).  It is called
            once per distinct candidate; NaN ranks last.
        head_dim: the rotary dim (``head_dim / 2`` factors).
        scale: the extension ratio ``s`` = target length / ``original_max_position_embeddings``.
        original_max_position_embeddings: the pretraining length (YaRN seeds; saved with the result).
        seeds: `initial_factors` kinds and/or explicit factor vectors, evaluated first; the rest of the initial
            population are mutations of them, round-robin.
        population, generations, parents, mutations, crossovers: P, T, k, N1, N2 (official defaults 64/40/32/16/16).
        mutation_prob, crossover_prob: per-pair probabilities (0.3); max_crossover_try: sweeps before a crossover
            gives up (20).
        step: the factor grid (0.01); max_factor: the upper bound (default ``1 + scale``, the official grid's end).
        base, beta_fast, beta_slow: RoPE base and YaRN betas for the yarn seeds.
        seed: the random stream (numpy ``default_rng``); the same seed gives the same search.
        progress: a tqdm bar over the generations.
    """
    d = _head_dim(head_dim)
    s = _scale(scale)
    h = d // 2
    omp = _positive_int(original_max_position_embeddings, "original_max_position_embeddings")
    population = _positive_int(population, "population")
    generations = _positive_int(generations, "generations", 0)
    parents = _positive_int(parents, "parents")
    mutations = _positive_int(mutations, "mutations", 0)
    crossovers = _positive_int(crossovers, "crossovers", 0)
    max_crossover_try = _positive_int(max_crossover_try, "max_crossover_try")
    if parents > population:
        raise ConfigError(f"longrope search: parents ({parents}) must not exceed population ({population})")
    if crossovers and parents < 2:
        raise ConfigError(f"longrope search: crossover needs parents >= 2, got {parents}")
    for name, p in (("mutation_prob", mutation_prob), ("crossover_prob", crossover_prob)):
        if not _is_number(p) or not 0 < p <= 1:
            raise ConfigError(f"longrope search: {name} must be in (0, 1], got {p!r}")
    if not _is_number(step) or step <= 0:
        raise ConfigError(f"longrope search: step must be a positive number, got {step!r}")
    max_factor = 1.0 + s if max_factor is None else max_factor
    if not _is_number(max_factor) or max_factor < 1:
        raise ConfigError(f"longrope search: max_factor must be a number >= 1, got {max_factor!r}")
    max_factor = float(max_factor)
    if not callable(objective):
        raise ConfigError(f"longrope search: objective must be callable, got {type(objective).__name__}")
    if isinstance(seeds, str) or not seeds:
        raise ConfigError(f"longrope search: seeds must be a non-empty sequence of kinds {INITIAL_KINDS} or "
                          f"factor vectors, got {seeds!r}")

    vectors = []
    for i, item in enumerate(seeds):
        if isinstance(item, str):
            item = initial_factors(d, s, item, omp, base, beta_fast, beta_slow)
        vectors.append(np.asarray(check_factors(item, h, max_factor, where=f"longrope search: seed {i}"),
                                  dtype=np.float64))

    search = _Search(objective, h, max_factor, float(step), float(mutation_prob), float(crossover_prob),
                     max_crossover_try, seed)
    history: List[Dict[str, Any]] = []

    def record(generation: int, best: float) -> None:
        history.append({"generation": generation, "best": best, "evaluations": len(search.cache)})

    from tqdm import tqdm
    with tqdm(total=generations + 1, desc="LongRoPE search", disable=not progress, dynamic_ncols=True) as bar:
        pop: List[Candidate] = [search.evaluate(v) for v in vectors[:population]]
        while len(pop) < population:
            pop.append(search.mutate(vectors[(len(pop) - len(vectors)) % len(vectors)]))
        best = _sorted(pop)[0][1]
        record(0, best)
        bar.set_postfix(best=f"{best:.5g}")
        bar.update(1)
        for g in range(1, generations + 1):
            chosen = _sorted(pop)[:parents]
            k = len(chosen)
            children = [search.mutate(chosen[int(search.rng.integers(k))][0]) for _ in range(mutations)]
            for _ in range(crossovers):
                i, j = sorted(int(x) for x in search.rng.choice(k, 2, replace=False))
                child = search.crossover(chosen[i][0], chosen[j][0])
                children.append(child if child is not None else search.mutate(chosen[i][0]))
            pop = chosen + children
            best = _sorted(pop)[0][1]
            record(g, best)
            bar.set_postfix(best=f"{best:.5g}")
            bar.update(1)

    factors, value = _sorted(pop)[0]
    return SearchResult(factors=[float(x) for x in factors], value=value, head_dim=d, scale=s,
                        original_max_position_embeddings=omp, history=history, evaluations=len(search.cache),
                        cache_hits=search.hits, seed=seed)
