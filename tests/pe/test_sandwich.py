"""Sandwich (Chi et al., ACL 2023): values against NeMo's SandwichRelativePositionEmbedding formula."""
import math

import pytest
import torch

import zoo.pe as pe
from zoo.pe.sandwich import Sandwich
from zoo.positions import Positions


def nemo_sandwich(qlen, klen, hidden_size, num_heads):
    """NeMo ``SandwichRelativePositionEmbedding.forward`` (bidirectional), transcribed with loops."""
    out = torch.zeros(1, num_heads, qlen, klen, dtype=torch.float64)
    for h in range(num_heads):
        for i in range(qlen):
            for j in range(klen):
                rel = j - (i + klen - qlen)                                      # memory - context, last qlen keys
                s = sum(math.cos(rel / 10000 ** (2 * t / hidden_size)) for t in range(1, hidden_size // 2 + 1))
                out[0, h, i, j] = (s - hidden_size / 2) / ((h + 1) * 8 / num_heads)
    return out


@pytest.mark.parametrize("nq, nk", [(6, 6), (2, 7)])
def test_matches_nemo(nq, nk):
    enc = Sandwich(num_heads=4, head_dim=8)
    q, k = torch.randn(1, 4, nq, 8), torch.randn(1, 4, nk, 8)
    torch.testing.assert_close(enc.bias(q, k, None, 8 ** -0.5).double(), nemo_sandwich(nq, nk, 8, 4),
                               rtol=1e-5, atol=1e-5)


def test_one_frequency_closed_form_and_ids():
    # d = 2: one sinusoid, w_1 = 10000^-1: bias = (cos(delta / 10000) - 1) / (8 (h + 1) / H)
    enc = pe.create("sandwich", num_heads=2, head_dim=2)
    ids = torch.tensor([[0.0, 1000.0, 5000.0]])
    b = enc.bias(torch.zeros(1, 2, 3, 2), torch.zeros(1, 2, 3, 2), Positions(ids=ids), 1.0)
    delta = ids[0][None, :] - ids[0][:, None]
    for h in range(2):
        torch.testing.assert_close(b[0, h], (torch.cos(delta / 10000) - 1) / (8 * (h + 1) / 2))
    assert (b <= 0).all() and b[0, :, range(3), range(3)].abs().max() == 0


def test_registered_and_refuses_bad_arguments():
    assert pe.info("sandwich").hooks == ("bias",) and pe.info("sandwich").position_only
    assert isinstance(pe.build("sandwich", dim=32, head_dim=8, num_heads=4, causal=True), Sandwich)
    with pytest.raises(ValueError, match="head_dim must be even"):
        Sandwich(4, 7)
    with pytest.raises(ValueError, match="q has 2 heads but Sandwich was built with num_heads=4"):
        Sandwich(4, 8).bias(torch.zeros(1, 2, 3, 8), torch.zeros(1, 2, 3, 8), None, 1.0)
