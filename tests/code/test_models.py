"""Code LMs: KV cache == full forward, generation, causality, registry, positions rules and errors."""
import importlib

import pytest
import torch

import zoo
import zoo.registry as registry
from zoo import Positions
from zoo.pe.bipe import bipe_ids

import domains.code.models as M  # registers the code models (the registry may not list the domain yet)

NAMES = [f"code_lm_{pe}_{size}" for pe in ("nope", "rope", "alibi", "hirope", "bipe") for size in ("tiny", "small")]
KINDS = ["nope", "rope", "alibi", "hirope", "hirope_window", "bipe", "bipe_alibi"]
V = 40
NEWLINES = {3: 1, 7: 2}                                     # token 7 holds two newlines (e.g. "\n\n")
SMALL = dict(vocab_size=V, dim=32, depth=2, num_heads=4, max_seq_len=64)


def make(kind: str, **kw) -> M.CodeLM:
    torch.manual_seed(0)
    pe, pe_kwargs = (("hirope", dict(window=3)) if kind == "hirope_window" else (kind, None))
    return M.CodeLM(**{**SMALL, "pe": pe, "pe_kwargs": pe_kwargs, "newline_ids": NEWLINES, **kw}).eval()


def tokens(b=2, n=14, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, V, (b, n), generator=g)
    x[:, 2] = 3                                                              # a line break in every row
    x[0, min(8, n - 1)] = 7
    return x


def levels_for(x):
    """Non-trivial (file, class, function, statement, token) levels: a new function every 4 tokens."""
    b, n = x.shape
    t = torch.arange(n).expand(b, n)
    return torch.stack([t * 0, t // 8, t // 4, t // 2, t], dim=-1)


def positions(x):
    pos = M.code_positions(x, NEWLINES, V)
    pos.levels = levels_for(x)
    return pos


def prefix(pos: Positions, m: int) -> Positions:
    return Positions(ids=pos.ids[:, :m], levels=pos.levels[:, :m], segments=pos.segments[:, :m])


# ---- registry -----------------------------------------------------------------------------------------------------

def test_registered_once_with_papers():
    assert zoo.list_models("code_lm_*") == sorted(NAMES)
    again = importlib.import_module("domains.code.models")                  # what zoo.registry does: no re-run
    assert again is M
    for name in NAMES:
        entry = registry._REGISTRY[name]
        assert entry.fn is getattr(M, name) and entry.domain == "code"
        assert entry.paper == M.PAPERS[name.split("_")[2]]
        assert "et al." in entry.fn.__doc__


@pytest.mark.parametrize("name", NAMES)
def test_default_sizes_and_param_count(name):
    c = 128 if name.endswith("tiny") else 256
    depth = 4 if name.endswith("tiny") else 6
    m = registry._build_meta(registry._REGISTRY[name])
    assert (m.dim, m.depth, m.num_heads, m.vocab_size, m.max_seq_len) == \
        (c, depth, 4 if c == 128 else 8, 8192, 1024)
    # tied head: the vocabulary matrix is counted once; per block 12c^2 + 13c; BiPE adds its 1024-row table
    want = 8192 * c + depth * (12 * c * c + 13 * c) + 2 * c + (1024 * c if "bipe" in name else 0)
    assert registry.count_params(name) == want
    assert m.head.weight is m.tok_emb.weight


@pytest.mark.parametrize("name", NAMES)
def test_create_forward_backward(name):
    torch.manual_seed(0)
    m = zoo.create(name, vocab_size=V, dim=32, depth=2, num_heads=4, newline_ids=NEWLINES)
    assert m.zoo_name == name
    x = tokens()
    logits = m(x, positions(x))
    assert logits.shape == (2, 14, V)
    logits.logsumexp(-1).mean().backward()
    for n, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
    assert m.tok_emb.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("pe", ["nope", "rope", "alibi", "hirope", "bipe"])
def test_overfits_a_tiny_batch(pe):
    torch.manual_seed(0)
    m = zoo.create(f"code_lm_{pe}_tiny", vocab_size=V, dim=32, depth=2, num_heads=4, newline_ids=NEWLINES).train()
    x = tokens(n=16)
    pos = positions(x)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = torch.nn.functional.cross_entropy(m(x[:, :-1], M.Positions(
            ids=pos.ids[:, :-1], levels=pos.levels[:, :-1], segments=pos.segments[:, :-1])).reshape(-1, V),
            x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 3.0                                                   # ~ln(40) = 3.7 at init
    assert losses[-1] < 0.5 * losses[0]


# ---- KV cache ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_cache_equals_full_forward(kind):
    m = make(kind)
    x = tokens()
    pos = positions(x)
    with torch.no_grad():
        full = m(x, pos)
        cache = m.make_cache()
        steps = [m(x[:, :5], prefix(pos, 5), cache)]                        # prompt of several tokens
        steps.append(m(x[:, 5:8], prefix(pos, 8), cache))                   # a chunk
        for t in range(8, x.shape[1]):                                       # then one token at a time
            steps.append(m(x[:, t:t + 1], prefix(pos, t + 1), cache))
    assert cache[0].length == x.shape[1] and cache[-1].k.shape == (2, 4, 14, 8)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["nope", "rope", "alibi", "bipe"])
def test_cache_with_default_positions(kind):
    # no pos: token indices (and segments from the model's newline ids for the prompt)
    m = make(kind)
    x = tokens()
    with torch.no_grad():
        full = m(x)
        cache = m.make_cache()
        first = m(x[:, :6], None, cache)
        rest = m(x[:, 6:], M.extend_positions(m.default_positions(x[:, :6]), x, NEWLINES), cache)
    torch.testing.assert_close(torch.cat([first, rest], 1), full, atol=1e-5, rtol=1e-5)


def test_cache_needs_positions_of_all_keys():
    m = make("rope")
    x = tokens()
    cache = m.make_cache()
    m(x[:, :4], Positions(ids=torch.arange(4)), cache)
    with pytest.raises(ValueError, match=r"Positions.ids describes 1 tokens.*5.*4 cached \+ 1 new"):
        m(x[:, 4:5], Positions(ids=torch.arange(4, 5)), cache)
    with pytest.raises(ValueError, match="list of 2 KVCache"):
        m(x, None, cache[:1])


@pytest.mark.parametrize("kind", KINDS)
def test_generate_greedy_same_with_and_without_cache(kind):
    newlines = {i: 1 + i % 2 for i in range(V)}            # every token ends 1 or 2 lines: segments must advance
    m = make(kind, newline_ids=newlines)
    x = tokens(n=6)
    pos = positions(x) if kind.startswith("hirope") else None
    a = m.generate(x, 12, temperature=0, pos=pos)
    b = m.generate(x, 12, temperature=0, use_cache=False, pos=pos)
    assert a.shape == (2, 18) and torch.equal(a[:, :6], x)
    assert torch.equal(a, b)
    # greedy = argmax of the full forward at every step (the generation position rule applied to all tokens)
    full_pos = M.extend_positions(pos if pos is not None else m.default_positions(x), a[:, :-1], newlines)
    if kind.startswith("bipe"):
        assert (full_pos.segments[:, 6:] - full_pos.segments[:, 5:-1]).min() >= 1   # generated lines counted
    with torch.no_grad():
        assert torch.equal(m(a[:, :-1], full_pos).argmax(-1)[:, 5:], a[:, 6:])


def test_sampling_reproducible_and_top_k_one_is_greedy():
    m = make("rope")
    x = tokens(n=4)
    s1 = m.generate(x, 8, temperature=1.0, generator=torch.Generator().manual_seed(3))
    s2 = m.generate(x, 8, temperature=1.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(s1, s2)
    assert torch.equal(m.generate(x, 8, temperature=0.7, top_k=1), m.generate(x, 8, temperature=0))
    assert torch.equal(m.generate(x, 0), x)
    for bad, match in ((dict(temperature=-1.0), "temperature"), (dict(top_k=0), "top_k")):
        with pytest.raises(ValueError, match=match):
            m.generate(x, 2, **bad)
    with pytest.raises(ValueError, match="max_new_tokens"):
        m.generate(x, -1)


@pytest.mark.parametrize("kind", KINDS)
def test_causal(kind):
    m = make(kind)
    x = tokens()
    y = x.clone()
    y[:, 9] = 3                                                              # a newline: later segments move too
    with torch.no_grad():
        lx, ly = m(x, positions(x)), m(y, positions(y))
    torch.testing.assert_close(lx[:, :9], ly[:, :9], atol=1e-6, rtol=1e-6)
    assert (lx[:, 9:] - ly[:, 9:]).abs().max() > 1e-3


def test_bf16_autocast_full_and_cached():
    for kind in KINDS:
        m = make(kind)
        x = tokens()
        pos = positions(x)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            full = m(x, pos)
            cache = m.make_cache()
            inc = torch.cat([m(x[:, :7], prefix(pos, 7), cache)]
                            + [m(x[:, t:t + 1], prefix(pos, t + 1), cache) for t in range(7, 14)], 1)
        assert full.dtype == torch.bfloat16 and torch.isfinite(full).all()
        ref = m(x, pos).detach()
        assert (full.float() - ref).abs().max() < 0.1, kind
        assert (inc.float() - ref).abs().max() < 0.1, kind


# ---- positions rules --------------------------------------------------------------------------------------------

def test_line_intra_matches_bipe_ids_and_clips():
    torch.manual_seed(0)
    ids = torch.randint(0, 20, (3, 50))
    intra, inter = bipe_ids(ids, separator_ids=(3, 7), max_intra=1024)
    assert torch.equal(M.line_intra(inter), intra)
    assert torch.equal(M.line_intra(inter[0]), intra[0])
    seg = torch.tensor([0, 0, 0, 0, 0, 1, 1, 4])
    assert M.line_intra(seg, max_intra=3).tolist() == [0, 1, 2, 2, 2, 0, 1, 0]


def test_code_positions_and_extend_rule():
    x = torch.tensor([[5, 3, 6, 7, 8, 9]])
    pos = M.code_positions(x, NEWLINES)
    assert pos.ids.tolist() == [[0, 1, 2, 3, 4, 5]] and pos.levels is None
    assert pos.segments.tolist() == [[0, 0, 1, 1, 3, 3]]                     # token 7 closes two lines
    assert M.code_positions(x, flat_levels=True).levels[0, 4].tolist() == [4] * 5
    # generation: ids and token column +1, coarse levels repeated, segments + newlines of the previous token
    p = Positions(ids=torch.tensor([0, 1, 2]), levels=torch.tensor([[0, 1, 2, 5, 0], [0, 1, 2, 5, 1],
                                                                    [0, 1, 3, 6, 2]]),
                  segments=torch.tensor([0, 0, 1]), mask=torch.tensor([True, True, True]), causal=True)
    toks = torch.tensor([[1, 3, 7, 3, 2], [1, 3, 2, 2, 2]])
    out = M.extend_positions(p, toks, NEWLINES)
    assert out.ids.tolist() == [[0, 1, 2, 3, 4]] * 2 and out.causal
    assert out.levels[1, 3:].tolist() == [[0, 1, 3, 6, 3], [0, 1, 3, 6, 4]]
    assert out.segments.tolist() == [[0, 0, 1, 3, 4], [0, 0, 1, 1, 1]]
    assert out.mask.all() and out.mask.shape == (2, 5)
    assert M.extend_positions(p, toks).segments[0].tolist() == [0, 0, 1, 1, 1]   # no newline ids: same line


def test_flat_levels_make_hirope_equal_rope():
    rope, hi = make("rope", init_std=0.3), make("hirope", init_std=0.3)    # sharp attention: positions matter
    hi.load_state_dict(rope.state_dict())
    x = tokens()
    with torch.no_grad():
        torch.testing.assert_close(hi(x, M.code_positions(x, flat_levels=True)), rope(x), atol=1e-5, rtol=1e-5)
        assert (hi(x, positions(x)) - rope(x)).abs().max() > 1e-3             # a real hierarchy changes it


def test_newline_counts_from_tokenizer():
    class Tok:
        vocab_size = 4
        table = [b"a", b"\n", b"):\n\n    ", b"b\n"]

        def token_bytes(self, i):
            return self.table[i]

    assert M.newline_counts_from_tokenizer(Tok()) == {1: 1, 2: 2, 3: 1}
    assert M.newline_table({2: 2}, 4).tolist() == [0, 0, 2, 0]
    with pytest.raises(ValueError, match="token id 9"):
        M.newline_table([9], 4)


# ---- BiPE table, lengths, errors --------------------------------------------------------------------------------

def test_bipe_gradient_reaches_only_used_intra_rows():
    m = make("bipe", max_intra=16).train()
    x = tokens()
    pos = positions(x)
    m(x, pos).logsumexp(-1).sum().backward()
    used = M.line_intra(pos.segments).unique()
    g = m.intra_pe.weight.grad.abs().sum(-1)                                 # [max_intra]
    assert (g[used] > 0).all()
    unused = torch.ones(16, dtype=torch.bool)
    unused[used] = False
    assert unused.any() and (g[unused] == 0).all()


def test_max_seq_len_and_allow_longer():
    m = make("rope", max_seq_len=8)
    x = tokens(n=10)
    with pytest.raises(ValueError, match=r"10 tokens.*max_seq_len=8.*allow_longer"):
        m(x)
    cache = m.make_cache()
    m(x[:, :8], None, cache)
    with pytest.raises(ValueError, match=r"9 tokens \(8 cached \+ 1 new\) exceed max_seq_len=8"):
        m(x[:, 8:9], Positions(ids=torch.arange(9)), cache)
    m.allow_longer = True
    assert m(x).shape == (2, 10, V)
    # BiPE beyond its intra table: a line longer than max_intra runs, positions clip at max_intra - 1
    b = make("bipe", max_intra=4, max_seq_len=8, allow_longer=True)
    long_line = torch.full((1, 12), 5)
    out = b(long_line, Positions(segments=torch.zeros(1, 12, dtype=torch.long)))
    assert out.shape == (1, 12, V) and torch.isfinite(out).all()
    # tokens 3.. of the line share the clipped row: with identical tokens their inputs to block 0 are equal
    emb = b.intra_pe.embed(b.tok_emb(long_line), Positions(ids=M.line_intra(torch.zeros(1, 12), 4)))
    torch.testing.assert_close(emb[0, 3], emb[0, 11])


def test_missing_positions_fields_are_named():
    x = tokens()
    with pytest.raises(ValueError, match=r"pe='hirope'.*Positions.levels"):
        make("hirope")(x)                                                     # never invents a hierarchy
    with pytest.raises(ValueError, match=r"pe='bipe'.*Positions.segments"):
        make("bipe", newline_ids=None)(x)
    with pytest.raises(ValueError, match=r"pe='rope'.*Positions.ids"):
        make("rope")(x, Positions(segments=torch.zeros(2, 14, dtype=torch.long)))
    with pytest.raises(ValueError, match="at least 3 columns"):
        make("hirope")(x, Positions(levels=torch.arange(14).expand(2, 14)[..., None].expand(2, 14, 2)))
    with pytest.raises(ValueError, match=r"Positions.segments has batch 3"):
        make("bipe")(x, Positions(segments=torch.zeros(3, 14, dtype=torch.long)))


def test_bad_arguments():
    with pytest.raises(ValueError, match="pe must be one of"):
        M.CodeLM(pe="sinusoidal")
    with pytest.raises(ValueError, match="vocab_size"):
        M.CodeLM(vocab_size=0)
    with pytest.raises(ValueError, match="not divisible"):
        M.CodeLM(dim=30, num_heads=4)
    with pytest.raises(ValueError, match="input_ids"):
        make("nope")(torch.randn(2, 4))
    with pytest.raises(ValueError, match="no pe_kwargs"):
        M.CodeLM(pe="nope", pe_kwargs=dict(base=5))


@pytest.mark.parametrize("kind", ["nope", "rope", "bipe"])
def test_empty_input_and_prompt_are_refused(kind):
    m = make(kind)
    empty = torch.zeros(2, 0, dtype=torch.long)
    with pytest.raises(ValueError, match=r"input_ids has no tokens"):
        m(empty)
    with pytest.raises(ValueError, match=r"input_ids has no tokens"):
        m(empty, positions(empty))
    with pytest.raises(ValueError, match=r"input_ids has no tokens.*prompt"):
        m.generate(empty, 3)
    with pytest.raises(ValueError, match=r"input_ids has no tokens"):
        m.generate(empty, 0, use_cache=False)


@pytest.mark.parametrize("kind", ["nope", "rope", "hirope", "bipe"])
@pytest.mark.parametrize("bad", [V, V + 7, -1])
def test_token_id_outside_vocab_is_refused(kind, bad):
    m = make(kind)
    x = tokens()
    pos = positions(x)
    x[1, 5] = bad
    with pytest.raises(ValueError, match=rf"input_ids.*token id {bad}\b.*vocab_size={V}"):
        m(x, pos)
    with pytest.raises(ValueError, match=rf"token id {bad}\b.*vocab_size={V}"):
        m.generate(x[:, :6], 2, pos=prefix(pos, 6))
    cache = m.make_cache()
    m(x[:, :5], prefix(pos, 5), cache)
    with pytest.raises(ValueError, match=rf"token id {bad}\b"):
        m(x[:, 5:6], prefix(pos, 6), cache)
    with pytest.raises(ValueError, match=rf"token id {bad}\b.*vocab_size={V}"):
        M.code_positions(x, NEWLINES, V)                                     # the newline table is V long
