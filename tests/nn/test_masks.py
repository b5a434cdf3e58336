"""AttentionMask against dense references written with Python loops from the rules' definitions; chunk rows and the
KV-cache form against rows of the full mask; SDPA with the additive mask against a naive masked softmax; the
FlexAttention mask_mod through ``create_mask``; no empty rows; clear errors."""
import dataclasses
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import create_mask

from zoo.errors import ConfigError
from zoo.nn.masks import AttentionMask, check_rows

N = 9
# document ids differing per batch element: [0 0 0 1 1 2 2 2 2] and [0 1 1 1 1 1 3 3 4]
DOCS = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2, 2], [0, 1, 1, 1, 1, 1, 3, 3, 4]])


def visible(cfg: dict, i: int, j: int, di=None, dj=None) -> bool:
    """The rules as written in the definitions, one (query i, key j) pair at a time."""
    if cfg.get("causal") and not j <= i:
        return False
    w = cfg.get("window")
    if w is not None:
        inside = (0 <= i - j < w) if cfg.get("causal") else (abs(i - j) < w)
        if not inside and not j < cfg.get("sinks", 0):
            return False
    blk = cfg.get("block")
    if blk is not None and not (j // blk <= i // blk):
        return False
    if cfg.get("per_document") and di != dj:
        return False
    return True


def reference(cfg: dict, q_idx, k_idx, docs=None) -> torch.Tensor:
    """[b|1, 1, nq, nk] booleans from the loop definition; docs [b, n] indexed by absolute token index."""
    b = 1 if docs is None else docs.shape[0]
    out = torch.zeros(b, 1, len(q_idx), len(k_idx), dtype=torch.bool)
    for bi in range(b):
        for r, i in enumerate(q_idx):
            for c, j in enumerate(k_idx):
                di = dj = None
                if docs is not None:
                    di, dj = int(docs[bi, i]), int(docs[bi, j])
                out[bi, 0, r, c] = visible(cfg, i, j, di, dj)
    return out


def all_configs():
    out = []
    for causal, window, sinks, block, per_document in itertools.product(
            (False, True), (None, 1, 3), (0, 2), (None, 1, 4), (False, True)):
        if sinks and window is None:
            continue
        if block is not None and causal:
            continue
        out.append(dict(causal=causal, window=window, sinks=sinks, block=block, per_document=per_document))
    return out


CONFIGS = all_configs()


def cfg_id(cfg):
    return "-".join(f"{k}={v}" for k, v in cfg.items() if v not in (False, None, 0)) or "none"


@pytest.mark.parametrize("cfg", CONFIGS, ids=[cfg_id(c) for c in CONFIGS])
def test_full_mask_matches_loop_definition_and_every_row_sees_a_key(cfg):
    mask = AttentionMask(**cfg)
    docs = DOCS if cfg["per_document"] else None
    idx = torch.arange(N)
    got = mask.allowed(idx, idx, docs, docs)
    want = reference(cfg, list(range(N)), list(range(N)), docs)
    assert got.dtype == torch.bool and got.shape == want.shape
    assert torch.equal(got, want)
    # the no-empty-row property for a full forward: every query sees itself, so at least one key
    assert bool(got.any(dim=-1).all())
    assert bool(got.diagonal(dim1=-2, dim2=-1).all())
    check_rows(got)


def test_configs_cover_every_option():
    # the parametrisation above must really exercise each rule and their combinations
    assert any(c["causal"] and c["window"] and c["sinks"] for c in CONFIGS)          # Lambda shape
    assert any(c["block"] and c["window"] and c["per_document"] for c in CONFIGS)
    assert len(CONFIGS) == 40


def test_lambda_shape_pinned():
    """causal + window 4 + sinks 2 over 8 tokens, written out by hand (LM-Infinite's Lambda-shaped mask)."""
    rows = ["x.......", "xx......", "xxx.....", "xxxx....", "xxxxx...", "xxxxxx..", "xx.xxxx.", "xx..xxxx"]
    want = torch.tensor([[ch == "x" for ch in r] for r in rows])
    got = AttentionMask(causal=True, window=4, sinks=2).rows(0, 8, 8)[0, 0]
    assert torch.equal(got, want)


def test_block_causal_pinned():
    rows = ["xxx.....", "xxx.....", "xxx.....", "xxxxxx..", "xxxxxx..", "xxxxxx..", "xxxxxxxx", "xxxxxxxx"]
    want = torch.tensor([[ch == "x" for ch in r] for r in rows])
    assert torch.equal(AttentionMask(block=3).rows(0, 8, 8)[0, 0], want)
    # block=1 is plain causal
    assert torch.equal(AttentionMask(block=1).rows(0, 8, 8)[0, 0], torch.ones(8, 8, dtype=torch.bool).tril())


def test_bidirectional_window_is_a_band_and_sinks_are_seen_from_everywhere():
    m = AttentionMask(window=2, sinks=1).rows(0, 6, 6)[0, 0]
    band = torch.ones(6, 6, dtype=torch.bool).triu(-1).tril(1)
    band[:, 0] = True
    assert torch.equal(m, band)


@pytest.mark.parametrize("cfg", [CONFIGS[i] for i in range(0, len(CONFIGS), 5)])
def test_chunk_rows_and_cache_form_equal_rows_of_the_full_mask(cfg):
    mask = AttentionMask(**cfg)
    docs = DOCS if cfg["per_document"] else None
    full = mask.rows(0, N, N, docs=docs)
    for start in range(N):
        for c in (1, 2, 4):
            if start + c > N:
                continue
            assert torch.equal(mask.rows(start, c, N, docs=docs), full[..., start:start + c, :])
    for nq in (1, 3, N):
        assert torch.equal(mask.for_cache(nq, N, docs=docs), full[..., N - nq:, :])
    # a chunk of the first keys only (the keys a causal prefix has so far) is the top-left block of the full mask
    assert torch.equal(mask.rows(2, 3, 6, docs=None if docs is None else docs[:, :6]), full[..., 2:5, :6])


def test_allowed_on_arbitrary_absolute_indices_matches_loop():
    cfg = dict(causal=True, window=3, sinks=2, per_document=True)
    docs = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]])                 # ids per absolute index
    q_idx, k_idx = [10, 12, 13], [0, 1, 3, 5, 9, 10, 11, 12, 13]
    got = AttentionMask(**cfg).allowed(torch.tensor(q_idx), torch.tensor(k_idx), docs[:, q_idx], docs[:, k_idx])
    assert torch.equal(got, reference(cfg, q_idx, k_idx, docs))


def test_documents_differ_per_batch_element():
    mask = AttentionMask(per_document=True)
    got = mask.rows(0, N, N, docs=DOCS)
    assert got.shape == (2, 1, N, N)
    assert not torch.equal(got[0], got[1])
    # token 2 is in the first document in batch 0 (with 0 and 1) but shares the second one with 1..5 in batch 1
    assert got[0, 0, 2].tolist() == [True, True, True] + [False] * 6
    assert got[1, 0, 2].tolist() == [False] + [True] * 5 + [False] * 3


def test_additive_values_and_none_when_nothing_is_masked():
    mask = AttentionMask(causal=True)
    add = mask.rows(0, 4, 4, additive=torch.bfloat16)
    keep = mask.rows(0, 4, 4)
    assert add.dtype == torch.bfloat16
    assert bool((add[keep] == 0).all())
    assert bool((add[~keep] == torch.finfo(torch.bfloat16).min).all())
    idx = torch.arange(5)
    assert AttentionMask().additive(idx, idx) is None
    assert AttentionMask().rows(0, 5, 5, additive=torch.float32) is None
    assert AttentionMask().for_cache(1, 5).shape == (1, 1, 1, 5) and bool(AttentionMask().for_cache(1, 5).all())


def naive_masked_attention(q, k, v, keep, scale):
    logits = (q @ k.transpose(-1, -2)) * scale
    logits = logits.masked_fill(~keep, -math.inf)
    return logits.softmax(dim=-1) @ v


@pytest.mark.parametrize("cfg", [dict(causal=True, window=3, sinks=1, per_document=True),
                                 dict(block=4, window=5, per_document=True),
                                 dict(window=2)])
def test_sdpa_with_additive_mask_equals_naive_masked_softmax(cfg):
    torch.manual_seed(0)
    b, h, d = 2, 3, 8
    mask = AttentionMask(**cfg)
    docs = DOCS if cfg.get("per_document") else None
    q, k, v = (torch.randn(b, h, N, d, dtype=torch.float64) for _ in range(3))
    add = mask.rows(0, N, N, docs=docs, additive=torch.float64)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=add)
    keep = reference(cfg, list(range(N)), list(range(N)), docs)                          # loop reference
    want = naive_masked_attention(q, k, v, keep, d ** -0.5)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)
    # and the masked keys really do not matter: changing them leaves the output alone
    v2 = v.clone()
    if cfg.get("per_document"):
        v2[1, :, 8] += 100.0                                    # batch 1: token 8 is alone in document 4
        out2 = F.scaled_dot_product_attention(q, k, v2, attn_mask=add)
        torch.testing.assert_close(out2[1, :, :8], out[1, :, :8], rtol=1e-10, atol=1e-10)
        assert not torch.allclose(out2[1, :, 8], out[1, :, 8])


def test_cache_decoding_with_additive_mask_equals_rows_of_the_full_attention():
    torch.manual_seed(1)
    b, h, d, nq = 2, 2, 4, 3
    mask = AttentionMask(causal=True, window=4, sinks=1, per_document=True)
    q, k, v = (torch.randn(b, h, N, d, dtype=torch.float64) for _ in range(3))
    full = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.rows(0, N, N, docs=DOCS, additive=torch.float64))
    step = F.scaled_dot_product_attention(q[:, :, -nq:], k, v,
                                          attn_mask=mask.for_cache(nq, N, docs=DOCS, additive=torch.float64))
    torch.testing.assert_close(step, full[:, :, -nq:], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cfg", [dict(causal=True, window=3, sinks=2, per_document=True),
                                 dict(block=2, window=3, sinks=1, per_document=True),
                                 dict(window=2, sinks=1),
                                 dict(causal=True)])
def test_mask_mod_through_flex_create_mask_equals_allowed(cfg):
    """``create_mask`` (vmap over the index grids, no compile) works on this torch on the CPU."""
    mask = AttentionMask(**cfg)
    docs = DOCS if cfg.get("per_document") else None
    b = 1 if docs is None else docs.shape[0]
    full = create_mask(mask.mask_mod(docs), b, 1, N, N, device="cpu")
    assert torch.equal(full, reference(cfg, list(range(N)), list(range(N)), docs))
    # a block of rows / the cache form: query row q is token q + query_start
    rows = create_mask(mask.mask_mod(docs, query_start=N - 3), b, 1, 3, N, device="cpu")
    assert torch.equal(rows, mask.for_cache(3, N, docs=docs).expand(b, 1, 3, N))


def test_mask_mod_without_rules_allows_everything():
    got = create_mask(AttentionMask().mask_mod(), 1, 1, 3, 4, device="cpu")
    assert bool(got.all()) and got.shape == (1, 1, 3, 4)


def test_check_rows_finds_a_query_that_sees_nothing():
    # arbitrary indices break the property: query 8 with keys 0..2 only, under a causal window of 2
    mask = AttentionMask(causal=True, window=2)
    got = mask.allowed(torch.tensor([1, 8]), torch.arange(3))
    assert got[0, 0, 1].sum() == 0 and got[0, 0, 0].sum() == 2
    with pytest.raises(ValueError, match="query row 1 .* sees no key"):
        check_rows(got)
    # a query whose document has no key among the keys given
    dm = AttentionMask(per_document=True)
    got = dm.allowed(torch.tensor([0]), torch.tensor([1, 2]), torch.tensor([[5]]), torch.tensor([[6, 6]]))
    with pytest.raises(ValueError, match="sees no key"):
        check_rows(got)
    with pytest.raises(ValueError, match="boolean"):
        check_rows(got.float())


@pytest.mark.parametrize("kwargs, message", [
    (dict(window=0), r"window must be None or an int >= 1, got 0"),
    (dict(window=2.5), r"window must be None or an int >= 1, got 2.5"),
    (dict(window=True), r"window must be None or an int >= 1, got True"),
    (dict(block=0), r"block must be None or an int >= 1, got 0"),
    (dict(sinks=-1, window=3), r"sinks must be an int >= 0, got -1"),
    (dict(sinks=4), r"sinks=4 needs a window"),
    (dict(block=4, causal=True), r"block=4 cannot be combined with causal=True"),
    (dict(causal=1), r"causal must be a bool, got 1"),
    (dict(per_document="yes"), r"per_document must be a bool, got 'yes'"),
])
def test_bad_config_raises_config_error_naming_the_field(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        AttentionMask(**kwargs)


def test_document_ids_missing_or_misshaped():
    mask = AttentionMask(causal=True, per_document=True)
    idx = torch.arange(4)
    with pytest.raises(ValueError, match=r"per_document=True\) needs document ids"):
        mask.allowed(idx, idx)
    with pytest.raises(ValueError, match=r"per_document=True\) needs document ids"):
        mask.rows(0, 4, 4)
    with pytest.raises(ValueError, match=r"k_doc must be an integer tensor \[b, 4\]"):
        mask.allowed(idx, idx, torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"q_doc must be an integer tensor"):
        mask.allowed(idx, idx, torch.zeros(1, 4), torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="same batch size"):
        mask.allowed(idx, idx, torch.zeros(2, 4, dtype=torch.long), torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"docs must be the document ids \[b, nk=4\]"):
        mask.rows(0, 4, 4, docs=torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="mask_mod needs docs"):
        mask.mask_mod()
    with pytest.raises(ValueError, match="per_document=False"):
        AttentionMask(causal=True).allowed(idx, idx, DOCS[:, :4], DOCS[:, :4])


def test_bad_indices_and_rows():
    mask = AttentionMask(causal=True)
    with pytest.raises(ValueError, match="q_idx must be a 1-D integer tensor"):
        mask.allowed(torch.arange(3.0), torch.arange(3))
    with pytest.raises(ValueError, match="k_idx must be a 1-D integer tensor"):
        mask.allowed(torch.arange(3), torch.arange(6).view(2, 3))
    with pytest.raises(ValueError, match="lie beyond the nk=4 keys"):
        mask.rows(3, 2, 4)
    with pytest.raises(ValueError, match="nq=5 queries cannot be the last of nk=4"):
        mask.for_cache(5, 4)
    with pytest.raises(ConfigError, match="query_start must be an int >= 0, got -1"):
        mask.rows(-1, 2, 4)


def test_mask_is_frozen_and_hashable():
    mask = AttentionMask(causal=True, window=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        mask.window = 4
    assert hash(mask) == hash(AttentionMask(causal=True, window=3))
    assert mask.active and not AttentionMask().active
