"""T5 relative buckets and bias: parity with HF transformers' T5Attention (test-only import), shift invariance,
KV cache, Positions.ids, unscaled-logit mode."""
import math

import pytest
import torch

from zoo import Positions
from zoo.nn import Attention, KVCache
from zoo.pe.t5 import T5RelativeBias, T5RelativeBiasUnscaledQK, t5_bucket

import transformers
from transformers.models.t5.modeling_t5 import T5Attention, T5Config  # noqa: E402


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("nb,md", [(32, 128), (64, 256), (8, 20), (4, 7)])
def test_bucket_matches_transformers(bidirectional, nb, md):
    rel = torch.arange(-600, 601)
    want = T5Attention._relative_position_bucket(rel, bidirectional=bidirectional, num_buckets=nb, max_distance=md)
    got = t5_bucket(rel, bidirectional=bidirectional, num_buckets=nb, max_distance=md)
    assert got.dtype == torch.long
    assert torch.equal(got, want)
    # a 2D matrix too (the shape the bias uses)
    m = torch.arange(40)[None, :] - torch.arange(40)[:, None]
    assert torch.equal(t5_bucket(m, bidirectional, nb, md),
                       T5Attention._relative_position_bucket(m, bidirectional, nb, md))


def test_bucket_pinned_values():
    # bidirectional 32/128: keys before the query use 0..15, after 16..31; exact for |n| < 8
    b = t5_bucket(torch.tensor([0, -1, -7, 1, 7, -8, 8, -128, 128, -1000]), True, 32, 128)
    # n = 8: 8 + int(ln(1)/ln(16)*8) = 8;  n >= 128: capped 15
    assert b.tolist() == [0, 1, 7, 17, 23, 8, 24, 15, 31, 15]
    # causal 32/128: keys after the query -> 0; n = 20: 16 + int(ln(20/16)/ln(8)*16) = 16 + 1 = 17
    assert t5_bucket(torch.tensor([5, 0, -3, -20, -500]), False, 32, 128).tolist() == \
        [0, 0, 3, 16 + int(math.log(20 / 16) / math.log(128 / 16) * 16), 31]
    # float relative positions are rounded
    assert t5_bucket(torch.tensor([-2.6, 0.4]), True).tolist() == [3, 0]


def _hf_attention(h=4, d=8, nb=32, md=128, decoder=False):
    cfg = T5Config(d_model=h * d, d_kv=d, num_heads=h, relative_attention_num_buckets=nb,
                   relative_attention_max_distance=md, dropout_rate=0.0, is_decoder=decoder)
    cfg._attn_implementation = "eager"
    return T5Attention(cfg, has_relative_attention_bias=True, layer_idx=0).eval()


@pytest.mark.parametrize("bidirectional", [True, False])
def test_bias_matches_compute_bias_incl_kv_cache(bidirectional):
    torch.manual_seed(0)
    hf = _hf_attention(decoder=not bidirectional)
    pe = T5RelativeBias(4, bidirectional=bidirectional)
    pe.load_state_dict({"relative_attention_bias.weight": hf.relative_attention_bias.weight.detach().clone()})
    for nq, nk in [(150, 150), (3, 200), (1, 9)]:
        q, k = torch.randn(2, 4, nq, 8), torch.randn(2, 4, nk, 8)
        want = hf.compute_bias(nq, nk, past_seen_tokens=nk - nq)
        got = pe.bias(q, k, None, 8 ** -0.5)
        assert got.shape == (1, 4, nq, nk) and got.dtype == torch.float32
        torch.testing.assert_close(got, want, atol=0, rtol=0)


@pytest.mark.parametrize("decoder", [False, True])
def test_attention_parity_with_t5_unscaled(decoder):
    """Our Attention + T5RelativeBias(unscaled_qk=True) with T5's q/k/v/o weights equals T5Attention."""
    torch.manual_seed(1)
    h, d, n = 4, 8, 11
    hf = _hf_attention(h, d, decoder=decoder)
    pe = T5RelativeBias(h, bidirectional=not decoder, unscaled_qk=True)
    assert isinstance(pe, T5RelativeBiasUnscaledQK)
    pe.relative_attention_bias.weight.data.copy_(hf.relative_attention_bias.weight.data)
    ours = Attention(h * d, h, qkv_bias=False, pe=pe, causal=decoder).eval()
    with torch.no_grad():
        ours.qkv.weight.copy_(torch.cat([hf.q.weight, hf.k.weight, hf.v.weight]))
        ours.proj.weight.copy_(hf.o.weight)
        ours.proj.bias.zero_()
    x = torch.randn(2, n, h * d)
    mask = None
    if decoder:
        mask = torch.zeros(1, 1, n, n).masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    with torch.no_grad():
        want = hf(x, mask=mask)[0]
        got = ours(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    # the default (scaled) mode is a different model: logits differ
    ours.pe = T5RelativeBias(h, bidirectional=not decoder)
    ours.pe.relative_attention_bias.weight.data.copy_(hf.relative_attention_bias.weight.data)
    with torch.no_grad():
        assert not torch.allclose(ours(x), want, atol=1e-4)


def test_kv_cache_decoding_matches_full():
    torch.manual_seed(2)
    attn = Attention(32, 4, pe=T5RelativeBias(4, bidirectional=False), causal=True).eval()
    x = torch.randn(1, 9, 32)
    with torch.no_grad():
        full = attn(x)
        cache = KVCache()
        parts = [attn(x[:, :5], None, cache)] + [attn(x[:, t:t + 1], None, cache) for t in range(5, 9)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_shift_invariance_and_ids(bidirectional):
    torch.manual_seed(3)
    pe = T5RelativeBias(3, bidirectional=bidirectional)
    q, k = torch.randn(2, 3, 6, 4), torch.randn(2, 3, 6, 4)
    plain = pe.bias(q, k, None, 0.5)
    shifted = pe.bias(q, k, Positions.sequence(6, batch=2, offset=1000), 0.5)
    torch.testing.assert_close(shifted, plain, atol=0, rtol=0)
    ids = torch.tensor([[0, 3, 4, 40, 41, 300], [5, 6, 7, 8, 9, 10]])
    got = pe.bias(q, k, Positions(ids=ids), 0.5)
    torch.testing.assert_close(pe.bias(q, k, Positions(ids=ids + 77), 0.5), got, atol=0, rtol=0)
    assert got.shape == (2, 3, 6, 6)
    w = pe.relative_attention_bias.weight
    bucket = T5Attention._relative_position_bucket(torch.tensor(40 - 4), bidirectional, 32, 128)
    torch.testing.assert_close(got[0, :, 2, 3], w[bucket])                       # query pos 4, key pos 40
    torch.testing.assert_close(got[1], plain[0])                                 # consecutive ids = indices


def test_state_dict_and_dtype():
    pe = T5RelativeBias(6, num_buckets=16, max_distance=64)
    assert list(pe.state_dict()) == ["relative_attention_bias.weight"]
    assert pe.relative_attention_bias.weight.shape == (16, 6)
    pe = pe.to(torch.bfloat16)
    q = torch.randn(1, 6, 4, 8, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert pe.bias(q, q, None, 0.3).dtype == torch.float32


def test_t5_bad_input():
    with pytest.raises(ValueError, match="num_buckets"):
        t5_bucket(torch.arange(3), True, num_buckets=2)
    with pytest.raises(ValueError, match="max_distance"):
        t5_bucket(torch.arange(3), True, num_buckets=32, max_distance=8)
    with pytest.raises(ValueError, match="relative_position"):
        t5_bucket([1, 2])
    with pytest.raises(ValueError, match="num_heads"):
        T5RelativeBias(0)
    with pytest.raises(ValueError, match="num_heads"):
        T5RelativeBias(4).bias(torch.randn(1, 3, 2, 2), torch.randn(1, 3, 2, 2), None, 1.0)
    with pytest.raises(ValueError, match="pos.ids"):
        T5RelativeBias(2).bias(torch.randn(1, 2, 3, 2), torch.randn(1, 2, 3, 2), Positions.sequence(4), 1.0)
    with pytest.raises(ValueError, match="nq"):
        T5RelativeBias(2).bias(torch.randn(1, 2, 5, 2), torch.randn(1, 2, 3, 2), None, 1.0)
