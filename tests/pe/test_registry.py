"""The encoding registry: names, specs, geometry, introspection, and that every encoding class is registered."""
import importlib
import inspect
import pkgutil

import pytest
import torch
from omegaconf import OmegaConf

import zoo.pe as pe
from zoo.errors import ConfigError
from zoo.positions import Positions

#: encoding classes that need no name of their own, and why
NOT_REGISTERED = {
    "IRPEWithValue": "what IRPE(...) returns when rpe_on includes the values ('v', 'qkv')",
    "ShawRPEWithValues": "what ShawRPE(...) returns with values=True (the default of 'shaw')",
    "T5RelativeBiasUnscaledQK": "what T5RelativeBias(...) returns with unscaled_qk=True",
    "_Kerple": "private base of KerpleLog / KerplePower",
    "MixedRoPE2dLayer": "the per-layer view of one MixedRoPE2d (MixedRoPE2d.layer(i))",
}


def encoding_classes():
    out = {}
    for m in pkgutil.iter_modules(pe.__path__):
        mod = importlib.import_module(f"zoo.pe.{m.name}")
        for name, obj in vars(mod).items():
            if inspect.isclass(obj) and issubclass(obj, pe.PositionalEncoding) and obj is not pe.PositionalEncoding \
                    and obj.__module__ == mod.__name__:
                out[name] = obj
    return out


def test_every_encoding_class_is_registered():
    registered = {pe.info(n).cls for n in pe.list_pe()}
    missing = [n for n, c in encoding_classes().items() if c not in registered and n not in NOT_REGISTERED]
    assert not missing, f"register these with @register_pe or list them in NOT_REGISTERED: {missing}"
    assert set(NOT_REGISTERED) <= set(encoding_classes())         # the exemptions name real classes


def test_every_rope_scaling_type_and_alibi_variant_has_a_name():
    for rope_type in pe.ROPE_TYPES:
        name = "rope" if rope_type == "default" else f"rope_{'linear' if rope_type == 'linear' else rope_type}"
        assert name in pe.list_pe(), name
    assert {"alibi", "alibi_interp", "alibi_interp_dynamic", "bipe_alibi"} <= set(pe.list_pe("*alibi*"))


def test_named_scaling_variant_equals_rope_scaled():
    # ScaledRoPE is pinned against HF transformers in test_rope_scaling.py; the named variant must be the same map
    q, k = torch.randn(2, 1, 2, 40, 16)
    pos = Positions(ids=torch.arange(40)[None])
    named = pe.create("rope_yarn", head_dim=16, factor=4.0, original_max_position_embeddings=10)
    generic = pe.create("rope_scaled", head_dim=16, scaling={"rope_type": "yarn", "factor": 4.0,
                                                             "original_max_position_embeddings": 10})
    for a, b in zip(named.rotate(q, k, pos), generic.rotate(q, k, pos)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert isinstance(named, pe.ScaledRoPE) and named.rope_type == "yarn"


def test_create_from_a_mapping_and_an_omegaconf_node():
    r = pe.create({"name": "rope", "head_dim": 8, "base": 500.0}, base=100.0)          # kw override the mapping
    assert isinstance(r, pe.RoPE) and r.base == 100.0
    cfg = OmegaConf.create({"name": "rope_scaled", "head_dim": 8, "scaling": {"rope_type": "linear", "factor": 2.0}})
    s = pe.create(cfg)
    assert s.rope_type == "linear" and s.scaling["factor"] == 2.0


def test_unknown_name_lists_the_closest():
    with pytest.raises(pe.PEConfigError, match=r"unknown positional encoding 'rope_yar'; closest: 'rope_yarn'"):
        pe.create("rope_yar", head_dim=8)
    with pytest.raises(ConfigError, match="has no 'name'"):
        pe.create({"head_dim": 8})
    with pytest.raises(ConfigError, match="must be a name or a mapping"):
        pe.create(3)


def test_unknown_keyword_names_it_and_the_accepted_ones():
    with pytest.raises(pe.PEConfigError, match=r"unknown keyword 'bsae'; closest: base; RoPE accepts: head_dim, base"):
        pe.create("rope", head_dim=8, bsae=5.0)
    with pytest.raises(ValueError, match=r"'rope_yarn' needs factor"):
        pe.create("rope_yarn", head_dim=8)


def test_build_maps_geometry_and_ignores_what_an_encoding_does_not_take():
    geometry = dict(dim=64, head_dim=8, num_heads=3, causal=True, max_len=48, depth=2, grid_size=(4, 4))
    assert pe.build("alibi", **geometry).causal and pe.build("alibi", **geometry).num_heads == 3
    assert pe.build("t5", **geometry).bidirectional is False                          # decoder: one-sided buckets
    assert pe.build("t5", **{**geometry, "causal": False}).bidirectional is True
    assert tuple(pe.build("learned", **geometry).pos_embed.shape[-2:]) == (48, 64)     # num_tokens_or_grid <- max_len
    v3 = pe.build("layoutlmv3_spatial", **geometry)
    assert 4 * v3.coordinate_size + 2 * v3.shape_size == 64                           # fills the model width
    assert pe.build({"name": "rope_dynamic", "factor": 2.0}, **geometry).original_length == 48
    # the spec's keywords win over geometry and stay strict
    assert pe.build({"name": "alibi", "causal": False}, **geometry).causal is False
    with pytest.raises(pe.PEConfigError, match="unknown keyword 'head_dimm'"):
        pe.build({"name": "rope", "head_dimm": 4}, **geometry)


def test_list_pe_pattern_and_positions():
    assert pe.list_pe("rope_*") == sorted(n for n in pe.list_pe() if n.startswith("rope_"))
    two_d = pe.list_pe(positions="2d")
    assert "irpe" in two_d and "rope" not in two_d and all(pe.info(n).positions == "2d" for n in two_d)
    assert set(pe.list_pe(positions="boxes")) >= {"bros", "layoutlm_2d", "layoutlmv3_bias"}
    with pytest.raises(ConfigError, match="positions must be one of"):
        pe.list_pe(positions="3d")


def test_info_reads_the_hooks_from_the_class():
    # what each method adds (the papers): ALiBi a logit bias, RoPE a rotation, sin/cos an embedding,
    # Shaw keys and values (values on by default), iRPE a bias (values with rpe_on='qkv')
    assert pe.info("alibi").hooks == ("bias",) and pe.info("alibi").position_only
    assert pe.info("rope").hooks == ("rotate",) and not pe.info("rope").position_only
    assert pe.info("sincos").hooks == ("embed",)
    assert pe.info("shaw").hooks == ("bias", "value")
    assert pe.info("irpe").hooks == ("bias", "value")
    i = pe.info("rope_yarn")
    assert i.cls is pe.ScaledRoPE and "arXiv:2309.00071" in i.paper and i.causal_ok and i.geometry == ("head_dim",
                                                                                                    "max_len")
    assert not pe.info("rope_dynamic").causal_ok                 # frequencies follow each call's length


@pytest.mark.parametrize("name", pe.list_pe())
def test_info_is_complete(name):
    i = pe.info(name)
    assert i.positions in pe.POSITION_KINDS
    assert i.hooks and set(i.hooks) <= set(pe.HOOKS) or name == "nope"
    assert "arXiv:" in i.paper or "20" in i.paper, i.paper                           # an arXiv id or a venue + year
    assert i.summary and set(i.geometry) <= set(pe.GEOMETRY)


def test_register_pe_as_a_decorator_and_a_call():
    class Temp(pe.PositionalEncoding):
        def __init__(self, num_heads: int, scale: float = 1.0):
            super().__init__()
            self.num_heads, self.scale = num_heads, scale

    try:
        pe.register_pe("temp_test", positions="1d", paper="test, 2024")(Temp)
        assert pe.build("temp_test", num_heads=5, dim=3).num_heads == 5
        assert pe.register_pe("temp_test", Temp) is Temp                               # same class: no error
        with pytest.raises(ValueError, match="already registered"):
            pe.register_pe("temp_test", pe.RoPE)
        with pytest.raises(ValueError, match="positions must be one of"):
            pe.register_pe("temp_bad", Temp, positions="3d")
        with pytest.raises(ValueError, match="not one of"):
            pe.register_pe("temp_bad", Temp, geometry={"scale": "width"})
    finally:
        pe.unregister_pe("temp_test")
    assert "temp_test" not in pe.list_pe()
