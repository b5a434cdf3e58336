"""Every registered encoding builds into every model family its positions fit (``pe=``), over `zoo.pe.list_pe()`.

1D encodings: the code LM, the DNA encoder and the DNA LM (forward, backward reaching the encoding's parameters,
``generate``; for causal_ok ones KV-cache decoding equals the full forward).  2D ones: the ViT.  Box ones: the
document encoder.  Misfits name both positions kinds; weights load into parameter-free swaps (context extension at
inference) and give the plain model's logits where the scaling formulas reduce to RoPE / ALiBi.
"""
import difflib
import warnings
from pathlib import Path

import pytest
import torch

import zoo
import zoo.pe as P
from zoo.errors import CheckpointError
from zoo.nn.fit import PEFitError, families
from zoo.positions import Positions

ROOT = Path(__file__).resolve().parent.parent
GEOM = dict(dim=32, head_dim=16, num_heads=2, max_len=32, depth=2, grid_size=(4, 4))
#: encodings no family takes, with the reason (checked against info().positions below)
UNFIT = {
    "reading_order": "graph positions (reading order + a neighbour graph): the graph document encoder has no "
                     "attention blocks, the box encoders provide boxes only",
    "v2pe": "multimodal positions (float visual increments): only DocV2PEEncoder builds them, around its own V2PE",
}
SEQ = dict(dim=32, depth=2, num_heads=2, max_seq_len=32)


def _spec(name, **geom):
    return {"name": name, **P.example_kwargs(name, **{**GEOM, **geom})}


def _quiet(fn, *a, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)                      # not causal_ok in a decoder
        return fn(*a, **kw)


def _pos(b, n, ids):
    # every 1D field an encoding may read: token index, segments of 3 tokens, flat levels (HiRoPE)
    idx = torch.arange(n).expand(b, n)
    return Positions(ids=idx, segments=idx // 3, levels=idx[..., None].expand(b, n, 5).contiguous())


def _pe_params(model):
    seen, out = set(), []
    for name, p in model.named_parameters(remove_duplicate=False):
        if (".pe." in name or name.startswith(("embed_pe.", "pe.", "layout.", "rel."))) and id(p) not in seen:
            seen.add(id(p))
            out.append((name, p))
    return out


def _check_grads(model):
    params = _pe_params(model)
    for name, p in params:
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    if params:
        assert any(bool(p.grad.abs().sum() > 0) for _, p in params), "no gradient reaches the encoding"


def _seq_models(name):
    spec = _spec(name)
    yield "code", _quiet(zoo.create, "code_lm_nope_tiny", vocab_size=64, pe=spec, **SEQ)
    yield "dna", zoo.create("dna_nope_tiny", pe=spec, **SEQ)
    yield "dna_lm", _quiet(zoo.create, "dna_lm_nope_tiny", pe=spec, **SEQ)


@pytest.mark.parametrize("name", P.list_pe(positions="1d"))
def test_1d_encoding_in_code_and_dna_models(name):
    torch.manual_seed(0)
    for family, m in _seq_models(name):
        b, n = 2, 9
        ids = torch.randint(7, m.vocab_size, (b, n))
        pos = _pos(b, n, ids)
        m.train()
        m(ids, pos).float().pow(2).mean().backward()
        _check_grads(m)
        if not m.causal:
            continue
        m.eval()
        out = m.generate(ids[:1, :4], 3, temperature=0, use_cache=m.kv_cache_ok,
                         pos=_pos(1, 4, ids), pos_fn=lambda t, p: _pos(t.shape[0], t.shape[1], t))
        assert out.shape == (1, 7) and torch.equal(out[:, :4], ids[:1, :4])
        if P.info(name).causal_ok:                                        # KV cache == full forward
            assert m.kv_cache_ok
            with torch.no_grad():
                full = m(ids, pos)
                cache, steps = m.make_cache(), []
                for t in range(n):
                    steps.append(m(ids[:, t:t + 1], _pos(b, t + 1, ids), cache=cache))
            torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5, msg=f"{family} {name}")
        else:
            assert not m.kv_cache_ok
            with pytest.raises(ValueError, match="not causal_ok"):
                m.make_cache()


@pytest.mark.parametrize("name", P.list_pe(positions="2d"))
def test_2d_encoding_in_vit(name):
    torch.manual_seed(0)
    m = zoo.create("vit_ape_tiny", img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=3,
                   pe=_spec(name))
    y = m(torch.randn(2, 3, 16, 16))
    assert y.shape == (2, 3) and torch.isfinite(y).all()
    y.pow(2).sum().backward()
    _check_grads(m)


@pytest.mark.parametrize("name", P.list_pe(positions="boxes"))
def test_box_encoding_in_document_encoder(name):
    torch.manual_seed(0)
    m = zoo.create("doc_layoutlm_tiny", vocab_size=50, dim=64, depth=2, num_heads=2, pe=_spec(name, dim=64))
    ids = torch.randint(5, 50, (2, 6))
    boxes = torch.randint(0, 400, (2, 6, 4))
    boxes[..., 2:] += boxes[..., :2]
    y = m(ids, boxes)
    assert y.shape == (2, 6, 64)
    y.pow(2).mean().backward()
    _check_grads(m)
    assert (m.layout is None) != (m.rel is None)                         # the kind's encoding is replaced


def test_every_encoding_fits_a_family_or_is_listed_with_its_reason():
    provided = {kind for f in families() for kind in f.positions}
    assert {"1d", "2d", "boxes"} <= provided
    unfit = {n for n in P.list_pe() if P.info(n).positions not in provided}
    assert unfit == set(UNFIT)


@pytest.mark.parametrize("model, kw, pe, kinds", [
    ("code_lm_rope_tiny", {}, "irpe", ("'2d'", "'1d'")),
    ("dna_rope_tiny", {}, "bros", ("'boxes'", "'1d'")),
    ("vit_irpe_tiny", dict(img_size=16, patch_size=4, depth=1), "rope", ("'1d'", "'2d'")),
    ("doc_bros_tiny", {}, "v2pe", ("'multimodal'", "'boxes'")),
])
def test_misfit_names_both_positions_kinds(model, kw, pe, kinds):
    with pytest.raises(PEFitError) as e:
        zoo.create(model, pe=pe, **kw)
    for k in kinds:
        assert k in str(e.value)


def test_decoder_warns_and_refuses_kv_cache_for_encodings_not_causal_ok():
    with pytest.warns(UserWarning, match="not causal_ok"):
        m = zoo.create("code_lm_rope_tiny", vocab_size=64, pe={"name": "rope_dynamic", "factor": 2.0}, **SEQ)
    with pytest.raises(ValueError, match="use_cache=False"):
        m.generate(torch.tensor([[3, 4]]), 2)
    assert m.generate(torch.tensor([[3, 4]]), 2, use_cache=False, temperature=0).shape == (1, 4)


# ---- context extension at inference: weights of a RoPE / ALiBi model into parameter-free variants ----------------

def _trained(tmp_path, name):
    torch.manual_seed(0)
    m = zoo.create(name, vocab_size=64, **SEQ)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    ids = torch.randint(0, 64, (4, 16))
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(m(ids[:, :-1]).transpose(1, 2), ids[:, 1:]).backward()
        opt.step()
    path = tmp_path / f"{name}.pt"
    torch.save(m.state_dict(), path)
    return m.eval(), path


# closed forms: factor 1 reduces every scaling to plain RoPE; dynamic NTK and LongRoPE's short factors change
# nothing below the original length (max_len = max_seq_len = 32 here, the inputs are 12 tokens)
ROPE_EQUAL = [
    {"name": "rope_linear", "factor": 1.0},
    {"name": "rope_yarn", "factor": 1.0},
    {"name": "rope_llama3", "factor": 1.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0},
    {"name": "rope_dynamic", "factor": 4.0},
    {"name": "rope_longrope", "short_factor": [1.0] * 8, "long_factor": [4.0] * 8,
     "original_max_position_embeddings": 32},
    {"name": "rope_scaled", "scaling": {"rope_type": "linear", "factor": 1.0}},
]


@pytest.mark.parametrize("spec", ROPE_EQUAL, ids=[s["name"] for s in ROPE_EQUAL])
def test_rope_model_extends_at_inference_with_scaled_rope(tmp_path, spec):
    plain, path = _trained(tmp_path, "code_lm_rope_tiny")
    ext = _quiet(zoo.create, "code_lm_rope_tiny", vocab_size=64, pe=spec, pretrained_file=str(path), **SEQ).eval()
    assert type(ext.blocks[0].attn.pe).__name__ == "ScaledRoPE"
    ids = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(ext(ids), plain(ids), atol=1e-5, rtol=1e-5)


def test_yarn_factor_4_loads_strictly_and_changes_the_logits(tmp_path):
    plain, path = _trained(tmp_path, "code_lm_rope_tiny")
    ext = zoo.create("code_lm_rope_tiny", vocab_size=64, pe={"name": "rope_yarn", "factor": 4.0},
                     pretrained_file=str(path), **SEQ).eval()
    q = torch.randn(1, 2, 12, 16)
    pos = Positions(ids=torch.arange(12)[None])
    rq = ext.blocks[0].attn.pe.rotate(q, q, pos)[0]
    assert not torch.allclose(rq, plain.blocks[0].attn.pe.rotate(q, q, pos)[0], atol=1e-3)  # the scaling took effect


@pytest.mark.parametrize("spec", [{"name": "alibi_interp", "factor": 1.0}, {"name": "alibi_interp_dynamic"}],
                         ids=["alibi_interp", "alibi_interp_dynamic"])
def test_alibi_model_extends_at_inference_with_interpolated_alibi(tmp_path, spec):
    # factor 1, or a dynamic interpolation below the trained length (max_len 32), is plain ALiBi
    plain, path = _trained(tmp_path, "code_lm_alibi_tiny")
    ext = _quiet(zoo.create, "code_lm_alibi_tiny", vocab_size=64, pe=spec, pretrained_file=str(path), **SEQ).eval()
    ids = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(ext(ids), plain(ids), atol=1e-5, rtol=1e-5)


def test_encoding_with_parameters_swapped_in_names_the_missing_encoding_keys(tmp_path):
    _, path = _trained(tmp_path, "code_lm_rope_tiny")
    with pytest.raises(CheckpointError, match=r"missing keys .*blocks\.0\.attn\.pe\..*positional encoding \(FIRE\)"):
        zoo.create("code_lm_rope_tiny", vocab_size=64, pe="fire", pretrained_file=str(path), **SEQ)


# ---- generated compatibility table --------------------------------------------------------------------------------

def test_encodings_doc_is_generated():
    from zoo.cli import encodings_markdown
    have, want = (ROOT / "docs" / "encodings.md").read_text(), encodings_markdown()
    diff = "".join(list(difflib.unified_diff(have.splitlines(True), want.splitlines(True), "docs/encodings.md",
                                             "registry"))[:40])
    assert have == want, f"docs/encodings.md is out of date: run `zoo pe --markdown > docs/encodings.md`\n{diff}"
    for name in P.list_pe():
        assert f"| `{name}` |" in have
    assert "| `rope_yarn` | 1d |" in have and "code LM" in have.split("| `rope_yarn` |")[1].split("\n")[0]


def test_a_swapped_hirope_asks_the_model_for_levels():
    # HiRoPE rotates by the hierarchy (Positions.levels), not by token ids: a model given it by spec must ask for
    # levels, and the error for a missing field names them
    lm = zoo.create("code_lm_nope_tiny", vocab_size=64, pe={"name": "hirope"})
    assert lm.needs == ("levels",)
    ids = torch.randint(0, 64, (1, 8))
    with pytest.raises(ValueError, match="levels"):
        lm(ids, zoo.Positions(ids=torch.arange(8)))
