"""One bias per forward: an encoding shared by all blocks builds its position-only bias once inside
``pe.shared(pos)`` (``zoo.nn.shared_encodings``), and the model's outputs and gradients are those of building it in
every block."""
import pytest
import torch

import zoo
from zoo.nn import Block, shared_encodings
from zoo.pe.alibi import ALiBi
from zoo.pe.cope import CoPE
from zoo.pe.fire import FIRE
from zoo.pe.kerple import KerpleLog
from zoo.pe.shaw import ShawRPE
from zoo.pe.t5 import T5RelativeBias

MODELS = ["dna_lm_alibi_tiny", "dna_lm_kerple_tiny", "dna_lm_fire_tiny", "dna_lm_t5_tiny", "dna_t5_tiny",
          "code_lm_alibi_tiny"]


def _count_bias_calls(pe):
    """Count the builds of the bias: ``bias`` or, on the fused Toeplitz path, ``bias_table``."""
    calls = []
    for hook in ("bias", "bias_table"):
        orig = getattr(pe, hook, None)
        if orig is None:
            continue

        def counted(*a, _orig=orig, **kw):
            calls.append(1)
            return _orig(*a, **kw)

        setattr(pe, hook, counted)
    return calls


def _encoding(model):
    pes = {id(b.attn.pe): b.attn.pe for b in model.blocks}
    assert len(pes) == 1, "these models share one encoding object between all blocks"
    return next(iter(pes.values()))


def _vocab(model):
    return model.vocab_size


@pytest.mark.parametrize("name", MODELS)
def test_model_builds_the_bias_once_per_forward_and_matches_per_block_bias(name):
    torch.manual_seed(0)
    model = zoo.create(name).train()
    for m in model.modules():                                                   # dropout off: compare exactly
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    pe = _encoding(model)
    ids = torch.randint(4, _vocab(model), (2, 48))

    def run():
        model.zero_grad(set_to_none=True)
        out = model(ids)
        out.float().square().mean().backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        return out.detach(), grads

    calls = _count_bias_calls(pe)
    out_shared, g_shared = run()
    assert len(calls) == 1, f"{name}: bias built {len(calls)} times in one forward of {model.depth} blocks"

    pe.bias_from_positions_only = False                                         # instance override: per-block
    calls.clear()
    out_each, g_each = run()
    assert len(calls) == model.depth
    torch.testing.assert_close(out_shared, out_each, rtol=0, atol=1e-6)
    assert g_shared.keys() == g_each.keys()
    for k in g_each:
        torch.testing.assert_close(g_shared[k], g_each[k], rtol=1e-5, atol=1e-7, msg=lambda m: f"{k}: {m}")
    # the encoding's own parameters get the gradients of every block (summed), not just of one
    pe_params = [k for k in g_each if ".attn.pe." in k]
    if pe_params:
        assert any(g_each[k].abs().sum() > 0 for k in pe_params)


def test_outside_a_scope_every_call_builds_and_nothing_outlives_the_scope():
    pe = FIRE(num_heads=2)
    q = torch.randn(1, 2, 8, 4)
    calls = _count_bias_calls(pe)
    a = pe.shared_bias(q, q, None, 0.5)
    b = pe.shared_bias(q, q, None, 0.5)
    assert len(calls) == 2 and a is not b
    with pe.shared():
        c = pe.shared_bias(q, q, None, 0.5)
        d = pe.shared_bias(q, q, None, 0.5)
        assert d is c
        # another query / key count, scale or dtype is another bias
        e = pe.shared_bias(q[:, :, -3:], q, None, 0.5)
        assert e.shape[-2:] == (3, 8)
        f = pe.shared_bias(q, q, None, 0.25)
        assert len(calls) == 5
        torch.testing.assert_close(f, c)                                         # FIRE ignores the scale
    assert not pe._forward_memo.active and pe._forward_memo._value is None
    pe.shared_bias(q, q, None, 0.5)
    assert len(calls) == 6


def test_a_new_positions_object_is_a_new_bias():
    pe = ALiBi(num_heads=2, causal=True).train()
    q = torch.randn(1, 2, 6, 4)
    p1 = zoo.Positions(ids=torch.arange(6)[None])
    p2 = zoo.Positions(ids=torch.arange(6)[None] * 2)
    with pe.shared():
        b1 = pe.shared_bias(q, q, p1, 1.0)
        b2 = pe.shared_bias(q, q, p2, 1.0)
    torch.testing.assert_close(b2, 2 * b1)                                      # ALiBi is linear in the distance


@pytest.mark.parametrize("pe", [ShawRPE(head_dim=4, max_relative_position=4),
                                CoPE(head_dim=4, npos_max=8)])
def test_biases_that_read_q_are_never_shared(pe):
    assert not pe.bias_from_positions_only
    for p in pe.parameters():                                                   # CoPE's table starts at zero
        torch.nn.init.normal_(p)
    q1, q2 = torch.randn(1, 2, 6, 4), torch.randn(1, 2, 6, 4)
    k = torch.randn(1, 2, 6, 4)
    with pe.shared():
        b1 = pe.shared_bias(q1, k, None, 0.5)
        b2 = pe.shared_bias(q2, k, None, 0.5)
    assert not torch.allclose(b1, b2)


@pytest.mark.parametrize("cls", [ALiBi, T5RelativeBias, KerpleLog, FIRE])
def test_position_only_family_is_marked(cls):
    assert cls.bias_from_positions_only


def test_shared_encodings_opens_each_distinct_encoding_once():
    shared_pe, own_pe = T5RelativeBias(num_heads=2), T5RelativeBias(num_heads=2)
    blocks = [Block(8, 2, pe=shared_pe), Block(8, 2, pe=shared_pe), Block(8, 2, pe=own_pe), Block(8, 2)]
    with shared_encodings(blocks):
        assert shared_pe._forward_memo.active and own_pe._forward_memo.active
    assert not shared_pe._forward_memo.active and not own_pe._forward_memo.active
