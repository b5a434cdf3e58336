"""Attention options on attention layers and on the shared bodies: the spec, the training-free extensions inside
`zoo.nn.Attention` (limits where a method must equal plain RoPE attention, the extension's own formula, chunked ==
dense, KV-cache decoding == full forward), packed documents, and options set on a loaded model."""
import pytest
import torch

import zoo
from zoo import Positions
from zoo.errors import ConfigError
from zoo.nn import Attention, DecoderLM
from zoo.nn.attention import KVCache
from zoo.nn.extension import lm_infinite_attention, ms_poe_head_order, ms_poe_ratios, ms_poe_rotate, \
    self_extend_attention, string_attention
from zoo.nn.masks import AttentionMask
from zoo.nn.options import (EXTENSIONS, TEMPERATURES, AttentionOptions, LMInfinite, MsPoE, SelfExtend, StringShift,
                            attention_options, build_extension, list_attention_options)
from zoo.nn.temperature import HeadTemperature, LogLengthScale
from zoo.pe import build

C, H, D, N = 32, 4, 8, 24


def rope_attention(**kw):
    torch.manual_seed(0)
    return Attention(C, H, pe=build("rope", head_dim=D, num_heads=H, causal=True), causal=True, **kw)


def qkv(attn, x):
    b, n, _ = x.shape
    return attn.qkv(x).reshape(b, n, 3, H, D).permute(2, 0, 3, 1, 4)             # un-rotated q, k, v


def out_proj(attn, o):
    b, h, n, d = o.shape
    return attn.proj(o.transpose(1, 2).reshape(b, n, h * d))


# ---- the spec -----------------------------------------------------------------------------------------------------

def test_spec_parses_and_names_what_is_wrong():
    o = attention_options({"window": 8, "sinks": 2, "temperature": {"name": "log_length", "train_len": 16}})
    assert o.mask == AttentionMask(window=8, sinks=2) and o.temperature == {"name": "log_length", "train_len": 16}
    assert attention_options(None).empty and attention_options(o) is o
    assert o.to_dict() == {"window": 8, "sinks": 2, "temperature": {"name": "log_length", "train_len": 16}}
    with pytest.raises(ConfigError, match="closest: window"):
        attention_options({"windw": 8})
    with pytest.raises(ConfigError, match="closest: self_extend"):
        attention_options({"extension": "self_extnd"})
    with pytest.raises(ConfigError, match="takes no keyword 'groups'.*closest: group"):
        attention_options({"extension": {"name": "self_extend", "groups": 2, "window": 4}})
    with pytest.raises(ConfigError, match="closest: log_length"):
        attention_options({"temperature": "log_lenght"})
    with pytest.raises(ConfigError, match="needs a 'name'"):
        attention_options({"temperature": {"tau": 2.0}})
    with pytest.raises(ConfigError, match="window .* must be <= shift"):
        build_extension({"name": "string", "shift": 4, "window": 8})
    with pytest.raises(ConfigError, match="group must be an int >= 1"):
        build_extension({"name": "self_extend", "group": 0, "window": 4})
    with pytest.raises(ConfigError, match="sinks=2 needs a window"):
        attention_options({"sinks": 2})


def test_every_option_cites_its_paper():
    listed = list_attention_options()
    assert set(listed["temperature"]) == set(TEMPERATURES) and set(listed["extension"]) == set(EXTENSIONS)
    for kind in listed.values():
        for name, paper in kind.items():
            assert paper, name
    for name in ("self_extend", "string", "lm_infinite", "ms_poe", "yarn", "log_length", "entropy_aware_abf",
                 "head"):
        assert "arXiv" in {**listed["temperature"], **listed["extension"]}[name], name


# ---- the extensions inside Attention --------------------------------------------------------------------------------

LIMITS = {   # settings under which the method is, by its definition, plain causal RoPE attention
    "self_extend_group_1": SelfExtend(group=1, window=4),
    "self_extend_wide_window": SelfExtend(group=4, window=N),
    "string_shift_0": StringShift(shift=0, window=0),
    "lm_infinite_wide_window": LMInfinite(window=N, n_global=2),
    "ms_poe_ratio_1": MsPoE(min_ratio=1.0, max_ratio=1.0, skip_layers=0),
    "ms_poe_skipped_layer": MsPoE(),                                            # layer 0 < skip_layers=2
}


@pytest.mark.parametrize("name", sorted(LIMITS))
def test_limits_equal_plain_rope_attention(name, one_thread):
    plain = rope_attention()
    ext = rope_attention(extension=LIMITS[name])
    x = torch.randn(2, N, C)
    torch.testing.assert_close(ext(x), plain(x), atol=2e-6, rtol=1e-5)


FORMULAS = {
    "self_extend": (lambda: SelfExtend(group=3, window=5),
                    lambda q, k, v, rope, s: self_extend_attention(q, k, v, rope, 3, 5, scale=s)),
    "string": (lambda: StringShift(shift=9, window=3),
               lambda q, k, v, rope, s: string_attention(q, k, v, rope, 9, 3, scale=s)),
    "lm_infinite": (lambda: LMInfinite(window=6, n_global=2),
                    lambda q, k, v, rope, s: lm_infinite_attention(q, k, v, rope, 6, 2, scale=s)),
    "ms_poe": (lambda: MsPoE(skip_layers=0),
               lambda q, k, v, rope, s: torch.nn.functional.scaled_dot_product_attention(
                   *ms_poe_rotate(q, k, rope, ms_poe_ratios(H)[ms_poe_head_order(q, k, s)]), v, is_causal=True)),
}


@pytest.mark.parametrize("name", sorted(FORMULAS))
def test_extension_in_attention_is_its_formula_dense_chunked_and_cached(name, one_thread):
    make, formula = FORMULAS[name]
    attn = rope_attention(extension=make()).eval()
    x = torch.randn(2, N, C)
    with torch.no_grad():
        q, k, v = qkv(attn, x)
        want = out_proj(attn, formula(q, k, v, attn.pe, attn.scale))
        plain = rope_attention()(x)
        assert (want - plain).abs().max() > 1e-3                                # the method changes something here
        attn.chunk_size = 0
        torch.testing.assert_close(attn(x), want, atol=2e-6, rtol=1e-5)
        attn.chunk_size = 5
        torch.testing.assert_close(attn(x), want, atol=2e-6, rtol=1e-5)
        cache, outs = KVCache(), []
        outs.append(attn(x[:, :7], Positions(ids=torch.arange(7)[None]), cache))
        for t in range(7, N):
            outs.append(attn(x[:, t:t + 1], Positions(ids=torch.arange(t + 1)[None]), cache))
        torch.testing.assert_close(torch.cat(outs, 1), want, atol=2e-6, rtol=1e-5)


def test_extension_reads_positions_and_refuses_what_it_cannot_take(one_thread):
    attn = rope_attention(extension=SelfExtend(group=2, window=4))
    x = torch.randn(1, N, C)
    shifted = Positions(ids=torch.arange(5, 5 + N)[None])
    with torch.no_grad():
        q, k, v = qkv(attn, x)
        want = out_proj(attn, self_extend_attention(q, k, v, attn.pe, 2, 4, q_idx=torch.arange(5, 5 + N),
                                                    k_idx=torch.arange(5, 5 + N)))
        torch.testing.assert_close(attn(x, shifted), want, atol=2e-6, rtol=1e-5)
    right = torch.ones(1, N, dtype=torch.bool)
    right[0, -5:] = False                                                       # right padding: real rows unchanged
    torch.testing.assert_close(attn(x, Positions(ids=torch.arange(N)[None], mask=right))[:, :-5],
                               attn(x[:, :-5]), atol=2e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="right padding only"):
        attn(x, Positions(ids=torch.arange(N)[None], mask=right.flip(-1)))
    with pytest.raises(ValueError, match="doc_ids"):
        attn(x, Positions.packed(torch.zeros(1, N, dtype=torch.long)))
    with pytest.raises(ValueError, match="same positions for every sequence"):
        attn(torch.randn(2, 4, C), Positions(ids=torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4]])))
    with pytest.raises(ConfigError, match="must be a RoPE"):
        Attention(C, H, pe=build("alibi", num_heads=H, causal=True), causal=True, extension=SelfExtend(2, 4))
    with pytest.raises(ConfigError, match="causal"):
        Attention(C, H, pe=build("rope", head_dim=D), extension=SelfExtend(2, 4))
    with pytest.raises(ConfigError, match="ContextExtension"):
        rope_attention(extension=torch.nn.Identity())


# ---- bodies and presets ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("pe", ["rope", "alibi", "nope", "t5"])
def test_packed_documents_equal_each_document_alone(pe, one_thread):
    torch.manual_seed(0)
    model = DecoderLM(50, dim=C, depth=2, num_heads=H, pe=pe, max_seq_len=64).eval()
    lengths = [7, 3, 9]
    ids = torch.randint(0, 50, (1, sum(lengths)))
    docs = torch.repeat_interleave(torch.arange(3), torch.tensor(lengths))[None]
    with torch.no_grad():
        packed = model(ids, Positions.packed(docs, causal=True))
        alone = torch.cat([model(part) for part in ids.split(lengths, dim=1)], dim=1)
        unmasked = model(ids)
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)
    assert (unmasked[:, 7:] - alone[:, 7:]).abs().max() > 1e-3                  # without the mask documents leak


def test_options_on_a_loaded_model_and_in_its_config(tmp_path, one_thread):
    torch.manual_seed(0)
    trained = zoo.create("code_lm_rope_tiny", vocab_size=64)
    path = tmp_path / "w.pt"
    torch.save(trained.state_dict(), path)
    spec = {"extension": {"name": "self_extend", "group": 4, "window": 16}}
    ext = zoo.create("code_lm_rope_tiny", vocab_size=64, pretrained_file=str(path), attention=spec)
    assert ext.config["attention"] == spec
    assert all(isinstance(b.attn.extension, SelfExtend) for b in ext.blocks)
    assert len({id(b.attn.extension) for b in ext.blocks}) == len(ext.blocks)  # one per layer
    x = torch.randint(0, 64, (1, 40))
    with torch.no_grad():
        short = x[:, :16]                                                       # inside the window: unchanged
        torch.testing.assert_close(ext(short), trained(short), atol=1e-5, rtol=1e-5)
        assert (ext(x) - trained(x)).abs().max() > 1e-3
        greedy = ext.eval().generate(x[:, :20], 12, temperature=0.0)
        torch.testing.assert_close(greedy, ext.generate(x[:, :20], 12, temperature=0.0, use_cache=False))
    ext.set_attention(None)
    assert "attention" not in ext.config and all(b.attn.extension is None for b in ext.blocks)
    with torch.no_grad():
        torch.testing.assert_close(ext(x), trained(x))
    # a learned per-head temperature added on top of the trained weights: the checkpoint lacks it, it keeps its init
    head = zoo.create("code_lm_rope_tiny", vocab_size=64, pretrained_file=str(path),
                      attention={"temperature": {"name": "head", "init": 1.6}})
    scales = [b.attn.temperature.scale for b in head.blocks]
    assert all(torch.equal(s, torch.full((4,), 1.6)) for s in scales)
    assert len({id(s) for s in scales}) == 4
    assert [k for k in head.state_dict() if "temperature" in k] == [f"blocks.{i}.attn.temperature.scale"
                                                                    for i in range(4)]
    with pytest.raises(ConfigError, match="not causal_ok|must be a RoPE"):
        zoo.create("code_lm_alibi_tiny", vocab_size=64, attention=spec)


def test_layers_know_their_index_for_layer_dependent_temperature(one_thread):
    model = DecoderLM(50, dim=C, depth=3, num_heads=H, pe="rope",
                      attention={"temperature": {"name": "entropy_aware_abf", "train_len": 4}})
    assert [b.attn.layer_idx for b in model.blocks] == [0, 1, 2]
    assert all(isinstance(b.attn.temperature, LogLengthScale) and b.attn.temperature.skip_layers == 2
               for b in model.blocks)
    ids = torch.randint(0, 50, (1, 12))
    plain = DecoderLM(50, dim=C, depth=3, num_heads=H, pe="rope")
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert not torch.equal(model(ids), plain(ids))
        model.set_attention({"temperature": {"name": "entropy_aware_abf", "train_len": 4, "skip_layers": 3}})
        torch.testing.assert_close(model(ids), plain(ids))                      # every layer skipped: unchanged


def test_ms_poe_skips_the_first_layers_as_the_official_runs(one_thread):
    model = DecoderLM(50, dim=C, depth=3, num_heads=H, pe="rope", attention={"extension": "ms_poe"})
    exts = [b.attn.extension for b in model.blocks]
    assert [e.layer_idx for e in exts] == [0, 1, 2] and all(e.skip_layers == 2 for e in exts)
    plain = DecoderLM(50, dim=C, depth=3, num_heads=H, pe="rope")
    plain.load_state_dict(model.state_dict())
    ids = torch.randint(0, 50, (1, 20))
    with torch.no_grad():
        assert not torch.allclose(model(ids), plain(ids), atol=1e-4)            # layer 2 is rescaled
        model.set_attention({"extension": {"name": "ms_poe", "skip_layers": 3}})
        torch.testing.assert_close(model(ids), plain(ids), atol=2e-5, rtol=1e-4)
