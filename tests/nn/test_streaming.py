"""Streaming generation with a bounded KV cache (`StreamingKVCache`, StreamingLLM): equal to the full cache while
nothing is evicted; after eviction, equal to a one-layer model run on exactly the kept tokens (re-positioned at their
cache index for rotary encodings, at their own positions for a position-only bias); bounded whatever the length."""
import pytest
import torch

from zoo import Positions
from zoo.errors import ConfigError
from zoo.nn import DecoderLM
from zoo.nn.attention import KVCache, StreamingKVCache

V = 50
ENCODINGS = ["rope", "xpos", "alibi", "t5", "kerple_log", "fire", "nope"]


def model(pe, depth=2):
    torch.manual_seed(0)
    return DecoderLM(V, dim=32, depth=depth, num_heads=4, pe=pe, max_seq_len=64, allow_longer=True).eval()


@pytest.mark.parametrize("pe", ENCODINGS)
def test_equal_to_the_full_cache_while_nothing_is_evicted(pe, one_thread):
    m = model(pe)
    x = torch.randint(0, V, (2, 9))
    full = m.generate(x, 27, temperature=0.0)
    stream = m.generate(x, 27, temperature=0.0, window=32, sinks=4)          # 36 tokens fit exactly
    assert torch.equal(full, stream)
    with torch.no_grad():                                                     # and the logits, step by step
        c_full, c_stream = m.make_cache(), m.make_cache(window=32, sinks=4)
        a, b = m(x, None, c_full), m(x, None, c_stream)
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
        for t in range(9, 36):
            nxt = full[:, t:t + 1]
            p = m.default_positions(full[:, :t + 1])
            torch.testing.assert_close(m(nxt, p, c_stream), m(nxt, p, c_full), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("pe", ["rope", "xpos", "alibi", "t5", "nope"])
def test_after_eviction_one_layer_sees_exactly_the_kept_tokens(pe, one_thread):
    # one layer: a token's key and value depend on the token alone (keys are cached un-rotated), so the streamed
    # logits of each step equal a plain forward over the kept tokens -- at cache indices 0..m-1 for a rotary
    # encoding (StreamingLLM's re-positioning), at their own positions for a bias
    m = model(pe, depth=1)
    sinks, window = 3, 5
    tokens = torch.randint(0, V, (1, 30))
    cache = m.make_cache(window=window, sinks=sinks)
    rotary = m.blocks[0].attn.pe is not None and m.blocks[0].attn.pe.has_rotate
    with torch.no_grad():
        m(tokens[:, :4], None, cache)
        for t in range(4, 30):
            got = m(tokens[:, t:t + 1], m.default_positions(tokens[:, :t + 1]), cache)[:, -1]
            held = list(range(t)) if t <= sinks + window else list(range(sinks)) + list(range(t - window, t))
            kept = held + [t]
            ids = torch.arange(len(kept)) if rotary else torch.tensor(kept)
            want = m(tokens[:, kept], Positions(ids=ids[None]))[:, -1]
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
            assert cache[0].kept.tolist() == (kept if len(kept) <= sinks + window else
                                              kept[:sinks] + kept[-window:])


def test_bounded_over_a_long_generation(one_thread):
    m = model("rope")
    out = m.generate(torch.randint(0, V, (1, 5)), 300, temperature=1.0, window=16, sinks=2,
                     generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 305)
    cache = m.make_cache(window=16, sinks=2)
    with torch.no_grad():
        m(out[:, :5], None, cache)
        for t in range(5, 305):
            m(out[:, t:t + 1], m.default_positions(out[:, :t + 1]), cache)
    assert all(c.size == 18 and c.length == 305 and c.k.shape[-2] == 18 for c in cache)


def test_refusals_are_named():
    with pytest.raises(ConfigError, match="window must be an int >= 1"):
        StreamingKVCache(0)
    with pytest.raises(ConfigError, match="sinks must be an int >= 0"):
        StreamingKVCache(4, sinks=-1)
    m = model("rope")
    with pytest.raises(ValueError, match="needs use_cache=True"):
        m.generate(torch.zeros(1, 3, dtype=torch.long), 2, window=4, use_cache=False)
    cope = model("cope")
    with pytest.raises(ConfigError, match="CoPE is neither"):
        cope.generate(torch.zeros(1, 3, dtype=torch.long), 2, window=4)
    with pytest.raises(ValueError, match="describes 5 tokens but the model sees 2"):
        m(torch.zeros(1, 2, dtype=torch.long), Positions(ids=torch.arange(5)[None]), m.make_cache(window=4))
    assert KVCache().size == 0 and StreamingKVCache(4).size == 0
