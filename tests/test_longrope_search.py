"""LongRoPE evolution search: seed vectors against values worked out by hand from the PI / NTK / YaRN formulas and
against `zoo.pe.rope_scaling.rope_frequencies` (checked there against HF transformers); search properties on
synthetic objectives with a known optimum (every candidate monotonic and in bounds, elitism, determinism, the cache,
the crossover's genes); the JSON file round trip into ``zoo.pe.create("rope_longrope")``; clear errors; a tiny
attention toy whose objective is a real loss through the rope_longrope encoding."""
import json
import math

import numpy as np
import pytest
import torch

import zoo.pe
from zoo.errors import ConfigError
from zoo.longrope_search import (SearchResult, _Search, check_factors, evolution_search, initial_factors,
                                 load_factors)
from zoo.pe.rope_scaling import rope_frequencies


# ---- seeds ----------------------------------------------------------------------------------------------------------
def test_pi_and_ntk_seeds_by_hand():
    assert initial_factors(8, 4.0, "pi") == [4.0] * 4
    # NTK-aware: b' = b * s^(d/(d-2)); lambda_t = b^(-2t/d) / b'^(-2t/d) = s^(2t/(d-2)); d = 8, s = 4
    expected = [1.0, 4 ** (1 / 3), 4 ** (2 / 3), 4.0]
    assert initial_factors(8, 4.0, "ntk") == pytest.approx(expected, rel=1e-12)
    b = 10000.0
    b_ntk = b * 4.0 ** (8 / 6)
    from_base = [b ** (-2 * t / 8) / b_ntk ** (-2 * t / 8) for t in range(4)]
    assert initial_factors(8, 4.0, "ntk") == pytest.approx(from_base, rel=1e-9)


def test_yarn_seeds_by_hand():
    # d = 16, base 1e4, L0 = 64, betas 32 / 1:
    #   low  = floor(16 ln(64 / (32 * 2 pi)) / (2 ln 1e4)) = floor(-0.994) = -1 -> 0
    #   high = ceil (16 ln(64 / (1 * 2 pi))  / (2 ln 1e4)) = ceil(2.016)   = 3
    #   ramp_t = clamp(t / 3, 0, 1) = 0, 1/3, 2/3, 1, 1, 1, 1, 1
    # yarn:          1 / ((1 - ramp) + ramp / 4) = 1, 4/3, 2, 4, ...
    # yarn_longrope: (1 - ramp) + 4 ramp          = 1, 2,   3, 4, ...   (microsoft/LongRoPE evolution/search.py)
    assert initial_factors(16, 4.0, "yarn", 64) == pytest.approx([1, 4 / 3, 2, 4, 4, 4, 4, 4], rel=1e-12)
    assert initial_factors(16, 4.0, "yarn_longrope", 64) == pytest.approx([1, 2, 3, 4, 4, 4, 4, 4], rel=1e-12)


def test_yarn_seed_matches_the_yarn_frequencies():
    d, s, omp = 128, 8.0, 4096
    inv, _ = rope_frequencies(d, 10000.0, None)
    inv_yarn, _ = rope_frequencies(d, 10000.0, {"rope_type": "yarn", "factor": s,
                                                "original_max_position_embeddings": omp})
    implied = (inv.double() / inv_yarn.double()).tolist()
    assert initial_factors(d, s, "yarn", omp) == pytest.approx(implied, rel=1e-5)
    # the seeds are themselves valid candidates: monotonic, in [1, s]
    for kind in ("pi", "ntk", "yarn", "yarn_longrope"):
        f = initial_factors(d, s, kind, omp)
        assert len(f) == d // 2 and f[0] >= 1 and f[-1] <= s + 1e-12 and all(np.diff(f) >= 0)


@pytest.mark.parametrize("args", [(7, 2.0, "pi"), (8, 0.5, "pi"), (8, 2.0, "linear"), (8, 2.0, "yarn"),
                                  (2, 2.0, "ntk")])
def test_initial_factors_errors(args):
    with pytest.raises(ConfigError):
        initial_factors(*args)


# ---- search on synthetic objectives ---------------------------------------------------------------------------------
TARGET = [1.0, 1.0, 1.3, 2.0, 3.1, 3.9, 4.6, 5.0]        # hidden monotonic optimum, head_dim 16, scale 4, max 5
SMALL = dict(original_max_position_embeddings=64, population=16, generations=12, parents=8, mutations=4,
             crossovers=4, step=0.05, progress=False)


class Recorder:
    """Squared distance to a hidden vector; records every call and checks the candidate's constraints."""

    def __init__(self, target, max_factor):
        self.target, self.max_factor, self.calls = np.asarray(target), max_factor, []

    def __call__(self, f):
        assert isinstance(f, list) and all(type(x) is float for x in f)
        assert len(f) == len(self.target)
        assert f[0] >= 1.0 and f[-1] <= self.max_factor + 1e-12
        assert all(b >= a for a, b in zip(f, f[1:])), f"non-monotonic candidate {f}"
        self.calls.append(tuple(f))
        return float(np.sum((np.asarray(f) - self.target) ** 2))


def test_search_constraints_improvement_and_elitism():
    obj = Recorder(TARGET, 5.0)
    r = evolution_search(obj, 16, 4.0, seed=0, **SMALL)
    seeds = [initial_factors(16, 4.0, k, 64) for k in ("pi", "ntk", "yarn")]
    best_seed = min(float(np.sum((np.asarray(f) - TARGET) ** 2)) for f in seeds)
    assert r.value < 0.5 * best_seed
    assert obj(r.factors) == pytest.approx(r.value)
    check_factors(r.factors, 8, 5.0)
    bests = [h["best"] for h in r.history]
    assert len(bests) == SMALL["generations"] + 1
    assert all(b <= a for a, b in zip(bests, bests[1:]))
    assert bests[0] <= best_seed and bests[-1] == r.value
    assert r.evaluations == len(obj.calls) - 1 == len(set(obj.calls[:-1]))   # never the same candidate twice
    assert [h["evaluations"] for h in r.history] == sorted(h["evaluations"] for h in r.history)


def test_search_is_deterministic_per_seed():
    runs = [evolution_search(Recorder(TARGET, 5.0), 16, 4.0, seed=s, **SMALL) for s in (3, 3, 4)]
    assert runs[0].factors == runs[1].factors and runs[0].history == runs[1].history
    assert runs[0].factors != runs[2].factors


def test_cache_answers_repeated_candidates():
    # head_dim 4, step 0.5, max_factor 3: only 15 monotonic vectors exist on the grid {1, 1.5, ..., 3}
    obj = Recorder([1.5, 2.5], 3.0)
    r = evolution_search(obj, 4, 2.0, original_max_position_embeddings=16, seeds=("pi", "ntk"), population=8,
                         generations=6, parents=4, mutations=4, crossovers=4, step=0.5, progress=True)
    assert len(obj.calls) == len(set(obj.calls)) <= 15
    assert r.evaluations == len(obj.calls) and r.cache_hits > 0
    assert r.factors == [1.5, 2.5] and r.value == 0.0
    assert all(x * 2 == int(x * 2) for call in obj.calls for x in call)          # stays on the step grid


def test_crossover_takes_each_gene_from_a_parent():
    s = _Search(lambda f: 0.0, 6, 5.0, 0.01, 0.3, 0.3, 20, seed=1)
    a, b = np.array([1.0, 1.2, 1.5, 2.0, 3.0, 4.0]), np.array([1.1, 1.3, 1.4, 2.5, 3.5, 5.0])
    assert s.crossover(a, a.copy()) is None                                        # identical parents
    s.evaluate(a), s.evaluate(b)                                                   # parents are always evaluated
    for _ in range(20):
        child, _ = s.crossover(a, b)
        assert all(c in (x, y) for c, x, y in zip(child, a, b))
        assert np.all(np.diff(child) >= 0) and not np.array_equal(child, a) and not np.array_equal(child, b)


def test_mutation_stays_between_neighbours():
    s = _Search(lambda f: 0.0, 5, 6.0, 0.25, 0.3, 0.3, 20, seed=2)
    parent = np.array([1.0, 1.5, 2.0, 4.0, 5.0])
    for _ in range(30):
        child, _ = s.mutate(parent)
        assert child[0] >= 1 and child[-1] <= 6 and np.all(np.diff(child) >= 0)
        assert all(abs((x - 1) / 0.25 - round((x - 1) / 0.25)) < 1e-9 for x in child)


def test_nan_ranks_last_and_explicit_seed_vectors():
    def obj(f):
        return float("nan") if f[-1] > 4.5 else sum((x - 2) ** 2 for x in f)
    r = evolution_search(obj, 8, 4.0, original_max_position_embeddings=32, seeds=([4.9] * 4, [1.0, 1.5, 2.0, 2.5]),
                         population=6, generations=4, parents=3, mutations=2, crossovers=1, step=0.1,
                         progress=False)
    assert math.isfinite(r.value) and r.factors[-1] <= 4.5


@pytest.mark.parametrize("kw", [dict(parents=20), dict(seeds=([1.0, 2.0, 1.5, 3.0],)), dict(seeds=([0.5] * 4,)),
                                dict(seeds=([1.0] * 3,)), dict(seeds="pi"), dict(step=0.0), dict(mutation_prob=0.0),
                                dict(parents=1), dict(max_factor=0.5)])
def test_search_config_errors(kw):
    base = dict(original_max_position_embeddings=32, population=8, parents=4, generations=1, progress=False)
    with pytest.raises(ConfigError):
        evolution_search(lambda f: 0.0, 8, 4.0, **{**base, **kw})


def test_objective_must_return_a_number():
    with pytest.raises(ConfigError, match="must return a number"):
        evolution_search(lambda f: "low", 8, 4.0, original_max_position_embeddings=32, population=4, parents=2,
                         generations=1, progress=False)


# ---- the file -------------------------------------------------------------------------------------------------------
def test_save_load_round_trip_into_rope_longrope(tmp_path):
    r = evolution_search(Recorder(TARGET, 5.0), 16, 4.0, seed=0, **SMALL)
    path = r.save(tmp_path / "sub" / "factors.json")
    assert [p.name for p in path.parent.iterdir()] == ["factors.json"]             # no temporary file left
    raw = json.loads(path.read_text())
    assert raw["long_factor"] == r.factors and raw["short_factor"] == [1.0] * 8
    assert raw["original_max_position_embeddings"] == 64 and raw["scale"] == 4.0 and raw["objective"] == r.value
    assert [h["best"] for h in raw["history"]] == [h["best"] for h in r.history]
    spec = load_factors(path, head_dim=16)
    assert spec == r.spec() == {"long_factor": r.factors, "short_factor": [1.0] * 8,
                                "original_max_position_embeddings": 64, "factor": 4.0}

    pe = zoo.pe.create("rope_longrope", head_dim=16, **spec)
    inv = torch.tensor([10000.0 ** (-2 * t / 16) for t in range(8)], dtype=torch.float64)
    long_inv, attention = pe.frequencies(seq_len=65)
    short_inv, _ = pe.frequencies(seq_len=64)
    assert torch.allclose(long_inv.double(), inv / torch.tensor(r.factors, dtype=torch.float64), rtol=1e-6)
    assert torch.allclose(short_inv.double(), inv, rtol=1e-6)
    assert attention == pytest.approx(math.sqrt(1 + math.log(4.0) / math.log(64)))   # LongRoPE's "su" scale


def _write(tmp_path, **changes):
    data = {"long_factor": [1.0, 1.5, 2.0, 2.0], "short_factor": [1.0] * 4, "original_max_position_embeddings": 32,
            "scale": 4.0, "head_dim": 8}
    data.update(changes)
    data = {k: v for k, v in data.items() if v is not ...}
    p = tmp_path / "f.json"
    p.write_text(json.dumps(data))
    return p


@pytest.mark.parametrize("changes, key", [
    (dict(long_factor=[1.0, 2.0, 1.5, 2.0]), "long_factor"),                       # decreasing
    (dict(long_factor=[0.9, 1.5, 2.0, 2.0]), "long_factor"),                       # below 1
    (dict(long_factor=[1.0, 1.5, 2.0]), "long_factor"),                            # head_dim 8 -> 4 factors
    (dict(long_factor="1,2,3,4"), "long_factor"),
    (dict(long_factor=[1.0, None, 2.0, 2.0]), "long_factor"),
    (dict(long_factor=...), "long_factor"),                                        # missing
    (dict(short_factor=[1.0, 0.5, 1.0, 1.0]), "short_factor"),
    (dict(original_max_position_embeddings=...), "original_max_position_embeddings"),
    (dict(original_max_position_embeddings=-4), "original_max_position_embeddings"),
    (dict(scale=0.5), "scale"),
    (dict(head_dim=16), "head_dim"),
])
def test_load_errors_name_file_and_key(tmp_path, changes, key):
    p = _write(tmp_path, **changes)
    with pytest.raises(ConfigError) as e:
        load_factors(p, head_dim=8)
    assert str(p) in str(e.value) and repr(key) in str(e.value)


def test_load_errors_missing_and_malformed_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist") as e:
        load_factors(tmp_path / "nope.json")
    assert "nope.json" in str(e.value)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_factors(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        load_factors(bad)
    assert load_factors(_write(tmp_path))["long_factor"] == [1.0, 1.5, 2.0, 2.0]    # a valid file, head_dim unknown


# ---- a real loss through the encoding -------------------------------------------------------------------------------
def test_end_to_end_attention_toy():
    # 1 layer, 2 heads, head_dim 8, original length 8, 32 tokens (scale 4): the objective is the KL divergence of the
    # causal attention under candidate long factors from the attention under hidden factors, both rotated by
    # zoo.pe.create("rope_longrope", ...); base 10 so that every pair turns noticeably within 32 tokens
    d, omp, n, s, base = 8, 8, 32, 4.0, 10.0
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 2, n, d, generator=g) * 2, torch.randn(1, 2, n, d, generator=g) * 2
    causal = torch.ones(n, n, dtype=torch.bool).tril()

    def log_attention(factors):
        pe = zoo.pe.create("rope_longrope", head_dim=d, long_factor=factors, short_factor=[1.0] * (d // 2),
                           original_max_position_embeddings=omp, factor=s, base=base)
        qr, kr = pe.rotate(q, k, None)
        logits = (qr @ kr.transpose(-1, -2) / math.sqrt(d)).masked_fill(~causal, float("-inf"))
        return logits.log_softmax(-1)

    hidden = [1.2, 2.5, 2.6, 3.3]
    teacher = log_attention(hidden)

    def objective(factors):
        student = log_attention(factors)
        return float((teacher.exp() * (teacher - student)).masked_fill(~causal, 0).sum(-1).mean())

    assert objective(hidden) == pytest.approx(0.0, abs=1e-6)
    r = evolution_search(objective, d, s, original_max_position_embeddings=omp, population=8, generations=6,
                         parents=4, mutations=3, crossovers=3, step=0.1, base=base, seed=0, progress=False)
    seeds = [objective(initial_factors(d, s, kind, omp, base=base)) for kind in ("pi", "ntk", "yarn")]
    assert min(seeds) > 1.0 and r.value < 0.5 * min(seeds)
    assert objective(r.factors) == pytest.approx(r.value)
    check_factors(r.factors, d // 2, 1 + s)
