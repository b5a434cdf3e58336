"""DNA encoders / decoders: registry, shapes, bidirectional vs causal, KV cache, padding, positions, bad input."""
import importlib

import pytest
import torch

import domains.genomics.models as M
import zoo
from zoo.positions import Positions

PES = tuple(M.PE_KINDS)
ENCODERS = [f"dna_{pe}_{s}" for pe in PES for s in ("tiny", "small")]
DECODERS = [f"dna_lm_{pe}_{s}" for pe in PES for s in ("tiny", "small")]


def _ids(b, n, seed=0, vocab=M.NUCLEOTIDE_VOCAB):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(M.NUM_SPECIAL, vocab, (b, n), generator=g)
    ids[:, 0] = M.CLS_ID
    return ids


def test_registered_exactly_once():
    names = zoo.list_models("dna_*")
    assert sorted(names) == sorted(ENCODERS + DECODERS)
    importlib.import_module("domains.genomics.models")          # a second import registers nothing new
    assert sorted(zoo.list_models("dna_*")) == sorted(names)


@pytest.mark.parametrize("name", ENCODERS + DECODERS)
def test_builds_forward_backward(name):
    torch.manual_seed(0)
    model = zoo.create(name)
    tiny = name.endswith("_tiny")
    assert (model.dim, model.depth, model.num_heads) == ((128, 4, 4) if tiny else (256, 6, 8))
    assert model.causal == name.startswith("dna_lm_")
    assert model.vocab_size == 12 and model.head.weight is model.tok_emb.weight
    ids = _ids(2, 10)
    out = model(ids)
    assert out.shape == (2, 10, 12) and torch.isfinite(out).all()
    out.logsumexp(-1).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.tok_emb.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("pe", PES)
def test_encoder_is_bidirectional_decoder_is_causal(pe):
    torch.manual_seed(0)
    enc = zoo.create(f"dna_{pe}_tiny", depth=2).eval()
    dec = zoo.create(f"dna_lm_{pe}_tiny", depth=2).eval()
    a = _ids(1, 12)
    b = a.clone()
    b[0, 9] = 7 if a[0, 9] != 7 else 8                          # change a later token
    with torch.no_grad():
        ea, eb = enc(a), enc(b)
        da, db = dec(a), dec(b)
    assert (ea[0, :9] - eb[0, :9]).abs().max() > 1e-4, "an encoder's earlier outputs must see later tokens"
    torch.testing.assert_close(da[0, :9], db[0, :9], atol=1e-5, rtol=0)
    assert (da[0, 9:] - db[0, 9:]).abs().max() > 1e-4


@pytest.mark.parametrize("pe", PES)
def test_kv_cache_matches_full_forward(pe):
    torch.manual_seed(0)
    model = zoo.create(f"dna_lm_{pe}_tiny", depth=2).eval()
    ids = _ids(2, 11, seed=1)
    ids[:, 0] = 7
    with torch.no_grad():
        full = model(ids)
        cache = model.make_cache()
        parts = [model(ids[:, :5], model.positions(ids[:, :5]), cache)]
        for t in range(5, 11):
            parts.append(model(ids[:, t:t + 1], model.positions(ids[:, :t + 1]), cache))
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-4, rtol=1e-4)
    assert cache[0].length == 11
    g1 = model.generate(ids[:, :4], 6, temperature=0)
    g2 = model.generate(ids[:, :4], 6, temperature=0, use_cache=False)
    assert g1.shape == (2, 10) and torch.equal(g1, g2)


def test_loss_decreases_when_overfitting():
    torch.manual_seed(0)
    model = zoo.create("dna_lm_alibi_tiny", depth=2)
    ids = _ids(4, 24, seed=3)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        logits = model(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("pe", ["alibi", "bipe", "t5"])
@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_classifier_ignores_padding(pe, pool):
    torch.manual_seed(0)
    model = zoo.create(f"dna_{pe}_tiny", depth=2, num_classes=3, pool=pool).eval()
    ids = _ids(1, 9)
    padded = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], 1)
    mask = torch.arange(13)[None] < 9
    with torch.no_grad():
        a = model(ids, model.positions(ids))
        b = model(padded, model.positions(padded, mask=mask))
    assert a.shape == (1, 3)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_decoder_last_pool_reads_last_real_token():
    torch.manual_seed(0)
    model = zoo.create("dna_lm_rope_tiny", depth=1, num_classes=2).eval()
    assert model.pool == "last"
    ids = _ids(1, 6)
    padded = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], 1)
    with torch.no_grad():
        a = model(ids)
        b = model(padded, model.positions(padded, mask=torch.arange(9)[None] < 6))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_dna_positions_segments_and_intra():
    # <cls> A C G T A C G  -> <cls> is its own segment, then triplets
    ids = torch.tensor([[1, 7, 8, 9, 10, 7, 8, 9]])
    pos = M.dna_positions(ids)
    assert pos.segments.tolist() == [[0, 1, 1, 1, 2, 2, 2, 3]]
    assert M.segment_intra(pos.segments).tolist() == [[0, 0, 1, 2, 0, 1, 2, 0]]
    assert pos.ids.tolist() == [list(range(8))]
    # spans of a non-overlapping 2-mer tokenizer: tokens start at bases 0, 2, 4, 6 -> triplets 0, 0, 1, 2
    spans = torch.tensor([[[-1, -1], [0, 2], [2, 4], [4, 6], [6, 8]]])
    seg = M.dna_positions(torch.tensor([[1, 20, 21, 22, 23]]), spans).segments
    assert seg.tolist() == [[0, 1, 1, 2, 3]]
    assert M.dna_positions(ids, segment_bases=4).segments.tolist() == [[0, 1, 1, 1, 1, 2, 2, 2]]


def test_bipe_uses_segments():
    torch.manual_seed(0)
    model = zoo.create("dna_bipe_tiny", depth=1).eval()
    ids = _ids(1, 10)
    with torch.no_grad():
        a = model(ids, model.positions(ids))
        p = model.positions(ids)
        p.segments = torch.arange(10)[None]                      # other segments -> other outputs
        b = model(ids, p)
    assert (a - b).abs().max() > 1e-4


def test_missing_positions_field_raises():
    ids = _ids(1, 8)
    with pytest.raises(ValueError, match="Positions.segments"):
        zoo.create("dna_bipe_tiny")(ids, Positions(ids=torch.arange(8)[None]))
    with pytest.raises(ValueError, match="Positions.ids"):
        zoo.create("dna_rope_tiny")(ids, Positions(segments=torch.zeros(1, 8, dtype=torch.long)))
    with pytest.raises(ValueError, match="describes 7 tokens"):
        zoo.create("dna_alibi_tiny")(ids, Positions(ids=torch.arange(7)[None]))


def test_sequence_beyond_limit_raises_unless_allowed():
    model = zoo.create("dna_kerple_tiny", depth=1, max_seq_len=16).eval()
    ids = _ids(1, 20)
    with pytest.raises(ValueError, match="exceed max_seq_len=16.*allow_longer"):
        model(ids)
    model.allow_longer = True
    with torch.no_grad():
        assert model(ids).shape == (1, 20, 12)
    dec = zoo.create("dna_lm_rope_tiny", depth=1, max_seq_len=8).eval()
    with pytest.raises(ValueError, match="max_seq_len=8"):
        dec.generate(_ids(1, 6), 4)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="vocab_size=12"):
        zoo.create("dna_rope_tiny")(torch.full((1, 4), 40))
    with pytest.raises(ValueError, match="causal= is fixed by the model name"):
        zoo.create("dna_rope_tiny", causal=True)
    with pytest.raises(ValueError, match="pool='cls' needs a bidirectional model"):
        zoo.create("dna_lm_rope_tiny", num_classes=2, pool="cls")
    with pytest.raises(ValueError, match="needs a causal model"):
        zoo.create("dna_rope_tiny").make_cache()
    with pytest.raises(ValueError, match="needs a causal model"):
        zoo.create("dna_rope_tiny").generate(_ids(1, 4), 2)
    with pytest.raises(ValueError, match="pe must be one of"):
        M.DNATransformer(pe="sinusoid")
    with pytest.raises(ValueError, match="input_ids must be an int"):
        zoo.create("dna_rope_tiny")(torch.zeros(1, 4))


def test_mlm_weights_load_into_classifier(tmp_path):
    from zoo.hub import save_state_dict
    torch.manual_seed(0)
    mlm = zoo.create("dna_bipe_tiny", depth=2)
    path = save_state_dict(mlm.state_dict(), tmp_path / "mlm.safetensors")
    clf = zoo.create("dna_bipe_tiny", depth=2, num_classes=5, pretrained_file=str(path))
    torch.testing.assert_close(clf.blocks[1].mlp.fc2.weight, mlm.blocks[1].mlp.fc2.weight)
    torch.testing.assert_close(clf.intra_pe.weight, mlm.intra_pe.weight)
    assert clf.classifier.weight.shape == (5, 128)
    with pytest.raises(Exception, match="blocks.1"):                  # a real mismatch still fails, naming keys
        zoo.create("dna_bipe_tiny", depth=1, pretrained_file=str(path))


def _tiny(name, **kw):
    return zoo.create(name, depth=1, dim=32, num_heads=2, **kw).eval()


@pytest.mark.parametrize("name", zoo.list_models(domain="genomics"))
def test_empty_input_refused_at_entry(name):
    models = [_tiny(name), _tiny(name, num_classes=3)]
    for model in models:
        for b in (1, 3):
            with pytest.raises(ValueError, match=r"input_ids has no tokens"):
                model(torch.zeros(b, 0, dtype=torch.long))
    if models[0].causal:
        with pytest.raises(ValueError, match=r"input_ids has no tokens"):
            models[0].generate(torch.zeros(1, 0, dtype=torch.long), 3)


@pytest.mark.parametrize("name", zoo.list_models(domain="genomics"))
def test_token_id_outside_vocabulary_is_named(name):
    model = _tiny(name)
    for bad in (12, 40, -1):
        ids = _ids(1, 6)
        ids[0, 3] = bad
        with pytest.raises(ValueError, match=rf"token id {bad}\b.*vocab_size=12"):
            model(ids)
        if model.causal:
            with pytest.raises(ValueError, match=rf"token id {bad}\b.*vocab_size=12"):
                model.generate(ids, 2)
