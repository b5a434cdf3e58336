"""`zoo.extend`: the training-free extension methods as builder overrides of a trained model."""
import math

import pytest
import torch

import zoo
from zoo.errors import ConfigError
from zoo.extend import METHODS, encoding_of, fitting_methods, longrope_method, resolve_methods
from zoo.pe import build

T = 32
V = 64


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    m = zoo.create("code_lm_rope_tiny", vocab_size=V, allow_longer=True).eval()
    return m, m.state_dict()


def rebuilt(overrides, sd, name="code_lm_rope_tiny"):
    m = zoo.create(name, vocab_size=V, allow_longer=True, **overrides).eval()
    m.load_state_dict(sd)
    return m


def test_which_methods_fit_which_encoding():
    assert fitting_methods(zoo.create("code_lm_rope_tiny", vocab_size=V)) == [
        "none", "pi", "ntk", "dynamic", "yarn", "llama3", "self_extend", "string", "lm_infinite", "ms_poe",
        "log_scale"]
    assert fitting_methods(zoo.create("code_lm_alibi_tiny", vocab_size=V)) == ["none", "log_scale", "alibi_interp"]
    # BiPE's RoPE turns by line number and HiRoPE by syntax levels: of the RoPE methods only a raised base fits
    for name in ("code_lm_bipe_tiny", "code_lm_hirope_tiny"):
        assert fitting_methods(zoo.create(name, vocab_size=V)) == ["none", "ntk", "log_scale"], name
    assert fitting_methods(zoo.create("code_lm_nope_tiny", vocab_size=V)) == ["none", "log_scale"]
    with pytest.raises(ConfigError, match="does not fit"):
        METHODS["pi"].overrides(zoo.create("code_lm_alibi_tiny", vocab_size=V), T, 2 * T)


@pytest.mark.parametrize("method", [m for m in METHODS if m not in ("alibi_interp",)])
def test_at_the_training_length_the_model_is_unchanged(trained, method, one_thread):
    model, sd = trained
    x = torch.randint(0, V, (1, T))
    ext = rebuilt(METHODS[method].overrides(model, T, T), sd)
    with torch.no_grad():
        torch.testing.assert_close(ext(x), model(x), atol=1e-5, rtol=1e-5)


def test_position_interpolation_and_ntk_follow_their_formulas(trained):
    model, _ = trained
    rope = encoding_of(model)
    s = 4.0
    pi = build(METHODS["pi"].overrides(model, T, 4 * T)["pe"], head_dim=rope.head_dim, max_len=T)
    p = torch.arange(0, 4 * T, dtype=torch.float32)
    torch.testing.assert_close(pi.cos_sin(p)[0], rope.cos_sin(p / s)[0])          # positions divided by s
    ntk = METHODS["ntk"].overrides(model, T, 4 * T)["pe"]
    d = rope.rot_dim                                                            # b' = b s^(d / (d - 2))
    assert ntk["base"] == pytest.approx(10000.0 * s ** (d / (d - 2)), rel=1e-12)
    yarn = METHODS["yarn"].overrides(model, T, 4 * T)["pe"]
    assert yarn["factor"] == s and yarn["original_max_position_embeddings"] == T


@pytest.mark.parametrize("L", [33, 64, 100, 512, 8192])
def test_self_extend_and_string_keep_every_distance_inside_the_training_length(L):
    enc = build("rope", head_dim=16)
    se = METHODS["self_extend"].overrides(enc, T, L)["attention"]["extension"]
    g, w = se["group"], se["window"]
    i = torch.arange(L)
    # the largest relative position SelfExtend scores: the grouped one of the last query against key 0
    grouped = (i[-1] // g + w - w / g) - 0
    assert grouped <= T - 1 and w < T
    st = METHODS["string"].overrides(enc, T, L)["attention"]["extension"]
    assert (L - 1) - st["shift"] + st["window"] <= T - 1 and 0 <= st["window"] <= st["shift"]


def test_longrope_from_a_search_file(tmp_path, trained):
    from zoo.longrope_search import SearchResult
    model, sd = trained
    half = encoding_of(model).rot_dim // 2
    result = SearchResult(factors=[1.0 + t / half for t in range(half)], value=1.0,
                          original_max_position_embeddings=T, scale=4.0, head_dim=2 * half)
    path = result.save(tmp_path / "factors.json")
    method = longrope_method(path)
    kw = method.overrides(model, T, 4 * T)
    assert kw["pe"]["name"] == "rope_longrope" and kw["pe"]["long_factor"] == result.factors
    ext = rebuilt(kw, sd)
    x = torch.randint(0, V, (1, 4 * T))
    with torch.no_grad():
        assert torch.isfinite(ext(x)).all() and not torch.equal(ext(x), model(x))
    assert [m.name for m in resolve_methods("all", model, path)][-1] == "longrope"
    with pytest.raises(ConfigError, match="longrope needs --longrope-factors"):
        resolve_methods("longrope", model)
    with pytest.raises(ConfigError, match="closest: self_extend"):
        resolve_methods("self_extnd", model)


@pytest.mark.parametrize("name", ["code_lm_bipe_tiny", "code_lm_hirope_tiny"])
def test_ntk_on_a_preset_rope_raises_its_base_and_keeps_the_rest(name):
    from zoo.extend import merge_overrides
    model = zoo.create(name, vocab_size=V, pe_kwargs={"base": 20000.0})
    pe = encoding_of(model)
    over = METHODS["ntk"].overrides(model, T, 4 * T)
    d = getattr(pe, "rot_dim", None) or pe.head_dim
    assert over == {"pe_kwargs": {"base": pytest.approx(20000.0 * 4.0 ** (d / (d - 2)), rel=1e-12)}}
    run_kwargs = {"vocab_size": V, "pe_kwargs": {"base": 20000.0, "layout": "half"}}
    merged = merge_overrides(run_kwargs, over)
    assert merged["pe_kwargs"]["layout"] == "half" and merged["pe_kwargs"]["base"] > 20000.0
    ext = zoo.create(name, **merged)
    assert type(encoding_of(ext)) is type(pe) and encoding_of(ext).base == merged["pe_kwargs"]["base"]
    ext.load_state_dict(model.state_dict())                                     # the trained weights still load


def test_method_names_as_the_issue_spells_them(trained):
    model, _ = trained
    assert [m.name for m in resolve_methods("none,pi,ntk,yarn,selfextend,lm-infinite,LM_Infinite", model)] == [
        "none", "pi", "ntk", "yarn", "self_extend", "lm_infinite", "lm_infinite"]
