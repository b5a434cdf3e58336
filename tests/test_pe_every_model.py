"""``pe=`` over the whole model registry: every registered model either takes ``pe=`` -- and then builds with an
encoding of each positions kind it provides, carrying that encoding, and refuses the other kinds with `PEFitError`
-- or belongs to one of the families the README names as taking none (and then says it does not know ``pe``)."""
import fnmatch
import re
from pathlib import Path

import pytest
import torch

import zoo
import zoo.pe as P
from zoo import registry
from zoo.errors import ConfigError
from zoo.nn.fit import PEFitError

ROOT = Path(__file__).resolve().parent.parent
#: one encoding per positions kind that builds from a model's geometry alone (no example keywords)
KINDS = ("1d", "2d", "boxes")


def _representative(kind):
    for name in P.list_pe(positions=kind):
        if not P.example_kwargs(name, dim=64, head_dim=16, num_heads=4, max_len=64, depth=2, grid_size=(8, 8)):
            return name
    raise AssertionError(f"no {kind} encoding builds from geometry alone")


def _no_pe_globs():
    text = " ".join((ROOT / "README.md").read_text().split())
    m = re.search(r"take none, by construction: (.*?)\. A parameter-free", text)
    assert m, "README.md must name the model families that take no pe= (sentence 'take none, by construction: ...')"
    return re.findall(r"`(\w+_\*)` \(", m.group(1))


def _takes_pe(name):
    accepted = registry._accepted_kwargs(registry._entry(name)).partition(":")[2]
    return "pe" in re.findall(r"\w+", accepted)


def test_the_models_without_pe_are_exactly_the_documented_families():
    globs = _no_pe_globs()
    assert len(globs) == 3, globs
    names = zoo.list_models()
    for g in globs:
        assert fnmatch.filter(names, g), f"README names {g}, which matches no registered model"
    without = sorted(n for n in names if not _takes_pe(n))
    documented = sorted(n for n in names if any(fnmatch.fnmatch(n, g) for g in globs))
    assert without == documented


@pytest.mark.parametrize("name", [n for n in zoo.list_models() if not _takes_pe(n)])
def test_a_model_without_pe_says_so(name):
    with pytest.raises(ConfigError, match=rf"unknown keyword argument 'pe' for {name}"):
        zoo.create(name, pe="alibi")


@pytest.mark.parametrize("name", [n for n in zoo.list_models() if _takes_pe(n)])
def test_a_model_with_pe_builds_the_kinds_it_provides_and_refuses_the_others(name):
    built = []
    for kind in KINDS:
        enc = _representative(kind)
        cls = P.info(enc).cls
        try:
            with torch.device("meta"):
                m = zoo.create(name, pe=enc)
        except PEFitError as e:
            assert f"'{kind}'" in str(e) and enc in str(e)
            continue
        assert any(isinstance(mod, cls) for mod in m.modules()), f"{name} built with pe={enc!r} carries no {cls}"
        built.append(kind)
    assert built, f"{name} takes pe= but fits none of {KINDS}"

