"""The shared bodies (zoo.nn.transformer): any 1D encoding, KV cache == full forward, causality, geometry wiring."""
import pytest
import torch

from zoo.nn import DecoderLM, TransformerEncoder
from zoo.nn.transformer import preset_spec, segment_intra, segment_intra_positions
from zoo.pe import ALiBi, BiPEIntraEmbedding, BiPERoPE, FIRE, RoPE, SinCosAPE, bipe_ids, sincos_1d
from zoo.positions import Positions

V, C, H = 23, 16, 2


def _lm(pe=None, embed_pe=None, **kw):
    torch.manual_seed(0)
    return DecoderLM(V, dim=C, depth=2, num_heads=H, pe=pe, embed_pe=embed_pe, **kw).eval()


ENCODINGS = {
    "rope": lambda: dict(pe=RoPE(C // H)),
    "alibi": lambda: dict(pe=ALiBi(H, causal=True)),
    "fire": lambda: dict(pe=FIRE(H, causal=True)),
    "sincos": lambda: dict(embed_pe=SinCosAPE(C)),
    "rope+sincos": lambda: dict(pe=RoPE(C // H), embed_pe=SinCosAPE(C)),
    "bipe": lambda: dict(pe=BiPERoPE(C // H), embed_pe=lambda: BiPEIntraEmbedding(4, C), embed_pe_name="intra_pe",
                         embed_positions=segment_intra_positions, needs=("segments",)),
}


def _pos(x):
    b, n = x.shape
    return Positions(ids=torch.arange(n).expand(b, n), segments=(torch.arange(n) // 3).expand(b, n))


@pytest.mark.parametrize("kind", list(ENCODINGS))
def test_cached_decoding_equals_full_forward(kind):
    m = _lm(**ENCODINGS[kind]())
    x = torch.randint(0, V, (2, 9))
    with torch.no_grad():
        full = m(x, _pos(x))
        cache = m.make_cache()
        first = m(x[:, :5], _pos(x[:, :5]), cache)
        rest = [m(x[:, i:i + 1], _pos(x[:, :i + 1]), cache) for i in range(5, 9)]
    torch.testing.assert_close(torch.cat([first] + rest, 1), full, rtol=1e-5, atol=1e-5)
    # generate with and without the cache agree (greedy)
    g1 = m.generate(x[:, :4], 5, temperature=0, pos_fn=lambda t, p: _pos(t), pos=_pos(x[:, :4]))
    g2 = m.generate(x[:, :4], 5, temperature=0, pos_fn=lambda t, p: _pos(t), pos=_pos(x[:, :4]), use_cache=False)
    assert g1.shape == (2, 9) and torch.equal(g1, g2)


@pytest.mark.parametrize("kind", list(ENCODINGS))
def test_decoder_is_causal_and_encoder_is_not(kind):
    x = torch.randint(0, V, (1, 8))
    y = x.clone()
    y[0, 6] = (x[0, 6] + 1) % V
    m = _lm(**ENCODINGS[kind]())
    with torch.no_grad():
        a, b = m(x, _pos(x)), m(y, _pos(y))
    torch.testing.assert_close(a[:, :6], b[:, :6])                              # the past never sees the future
    assert not torch.allclose(a[:, 6:], b[:, 6:])
    args = ENCODINGS[kind]()
    if isinstance(args.get("pe"), ALiBi) or isinstance(args.get("pe"), FIRE):
        return                                                                   # those were built causal
    torch.manual_seed(0)
    enc = TransformerEncoder(V, dim=C, depth=2, num_heads=H, **args).eval()
    with torch.no_grad():
        assert not torch.allclose(enc(x, _pos(x))[:, :6], enc(y, _pos(y))[:, :6])


def test_embedding_encoding_adds_its_table_to_the_token_embedding():
    # reference: tok_emb(x) + sincos_1d(ids) (Vaswani et al.) entering the first block
    m = _lm(embed_pe=SinCosAPE(C))
    x = torch.randint(0, V, (2, 7))
    seen = {}
    m.blocks[0].register_forward_pre_hook(lambda mod, args: seen.setdefault("x", args[0]))
    with torch.no_grad():
        m(x)
    ref = m.tok_emb(x) + sincos_1d(torch.arange(7).float(), C)
    torch.testing.assert_close(seen["x"], ref)


def test_segment_intra_matches_official_bipe_ids():
    # bipe_ids reproduces the official get_bilevel_ids; intra restarts in every segment and clips at max_intra - 1
    ids = torch.tensor([[1, 5, 6, 869, 7, 8, 13, 9, 869, 10, 11, 12, 14, 15]])
    intra, inter = bipe_ids(ids, max_intra=4)
    assert torch.equal(segment_intra(inter, max_intra=4), intra)
    assert torch.equal(segment_intra(inter[0], max_intra=4), intra[0])
    e = BiPEIntraEmbedding(4, C)
    assert torch.equal(segment_intra_positions(Positions(segments=inter), e).ids, intra)
    with pytest.raises(ValueError, match="segments must be a"):
        segment_intra(torch.zeros(1, 2, 3))


def test_specs_are_built_for_the_model_geometry():
    # a spec gets the body's geometry: head_dim for rotary encodings, causality (T5: bidirectional = not causal)
    m = _lm(pe={"name": "rope", "base": 500.0}, embed_pe={"name": "bipe_intra", "max_intra": 8},
            embed_pe_name="intra_pe")
    rope = m.blocks[0].attn.pe
    assert isinstance(rope, RoPE) and rope.head_dim == C // H and rope.base == 500.0
    assert all(b.attn.pe is rope for b in m.blocks) and m.pe_kind == "rope"
    assert tuple(m.intra_pe.weight.shape) == (8, C) and "intra_pe.weight" in m.state_dict()
    assert _lm(pe="t5").blocks[0].attn.pe.bidirectional is False
    assert TransformerEncoder(V, dim=C, depth=1, num_heads=H, pe="t5").blocks[0].attn.pe.bidirectional is True
    table = {"rope": {"name": "rope", "base": 500.0}, "alibi": "alibi", "nope": None}
    assert preset_spec(table, "rope", {"base": 7.0}) == {"name": "rope", "base": 7.0}         # kwargs win
    assert preset_spec(table, "alibi", None) == {"name": "alibi"}
    assert preset_spec(table, "nope") is None
    with pytest.raises(ValueError, match="pe='nope' takes no pe_kwargs"):
        preset_spec(table, "nope", {"base": 1})
    with pytest.raises(ValueError, match="pe must be one of"):
        preset_spec(table, "ropee")


def test_body_errors_name_the_argument():
    with pytest.raises(ValueError, match="causal= is fixed"):
        DecoderLM(V, causal=False)
    with pytest.raises(ValueError, match="depth must be a positive int"):
        TransformerEncoder(V, depth=0)
    enc = TransformerEncoder(V, dim=C, depth=1, num_heads=H)
    with pytest.raises(ValueError, match="a KV cache needs a causal model"):
        enc.make_cache()
    with pytest.raises(ValueError, match="generate\\(\\) needs a causal model"):
        enc.generate(torch.zeros(1, 2, dtype=torch.long), 1)
    with pytest.raises(ValueError, match="needs Positions.segments"):
        _lm(**ENCODINGS["bipe"]())(torch.zeros(1, 3, dtype=torch.long), Positions(ids=torch.arange(3)))


def test_generate_checks_the_vocabulary_of_the_prompt_only(monkeypatch):
    # the range check reads a flag back from the device: generate runs it on the prompt, not on every sampled token
    import zoo.nn.transformer as T
    seen = []
    real = T.check_input_ids

    def spy(ids, vocab_size=None):
        seen.append(vocab_size)
        return real(ids, vocab_size)

    monkeypatch.setattr(T, "check_input_ids", spy)
    lm = T.DecoderLM(50, dim=16, depth=1, num_heads=2, pe="rope").eval()
    prompt = torch.randint(0, 50, (2, 5))
    for use_cache in (True, False):
        seen.clear()
        out = lm.generate(prompt, max_new_tokens=4, temperature=0, use_cache=use_cache)
        assert out.shape == (2, 9) and seen == [None] * 4          # 4 forwards, none re-checking the range
    seen.clear()
    with pytest.raises(ValueError, match="token id 50"):
        lm(torch.full((1, 3), 50))
    assert seen == [50]                                             # a direct call is still checked
