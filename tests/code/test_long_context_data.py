"""Training-time context extension and packing in the causal_lm data pipeline: PoSE and randomized positions
(`zoo.position_sampling`, against the official recipe's rules), per-file packing (a packed batch's loss is the sum of
its documents' losses) and padded pieces, on real source files."""
import math

import pytest
import torch
import torch.nn.functional as F

import tree_sitter  # noqa: F401
import tokenizers  # noqa: F401

import zoo  # noqa: E402
from zoo.errors import ConfigError  # noqa: E402
from zoo.finetune import build_config, finetune  # noqa: E402
from zoo.finetune.engine import _epoch_generator  # noqa: E402
from zoo.position_sampling import pose_window, randomized_ids  # noqa: E402

from domains.code.task import IGNORE_INDEX, gather_windows, padded_pieces, padded_windows  # noqa: E402

from code_test_helpers import TINY, built_task, copy_small_tree, lm_cfg  # noqa: E402

@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return copy_small_tree(tmp_path_factory.mktemp("code_long") / "src")


# ---- PoSE and randomized positions ----------------------------------------------------------------------------------

def test_pose_window_follows_the_official_recipe():
    n, span, target = 16, 80, 64
    g = torch.Generator().manual_seed(0)
    seen_r1, seen_u, seen_r2 = set(), set(), set()
    for _ in range(3000):
        text, pos = pose_window(n, span, target, g)
        assert text.shape == (n + 1,) and pos.shape == (n,)
        # two contiguous chunks of text: the first r1 tokens from the start, then n - r1 (+1 label) ending at r2
        jumps = torch.nonzero(text.diff() != 1).flatten()
        r1 = int(jumps[0]) + 1 if jumps.numel() else int((pos.diff() != 1).nonzero()[0]) + 1
        assert jumps.numel() <= 1 and text[0] == 0 and torch.equal(text[:r1], torch.arange(r1))
        r2 = int(text[-1])
        assert n <= r2 <= span and 1 <= r1 <= (n + 1) // 2
        # positions: 0..r1-1, then r1+u .. n-1+u with 0 <= u <= target - n
        u = int(pos[r1] - r1)
        assert torch.equal(pos[:r1], torch.arange(r1)) and torch.equal(pos[r1:], torch.arange(r1, n) + u)
        assert 0 <= u <= target - n and int(pos[-1]) <= target - 1
        seen_r1.add(r1), seen_u.add(u), seen_r2.add(r2)
    # the draws cover their whole ranges (both ends included, as Python's random.randint)
    assert seen_r1 == set(range(1, (n + 1) // 2 + 1)) and seen_u == set(range(0, target - n + 1))
    assert min(seen_r2) == n and max(seen_r2) == span


def test_randomized_ids_are_sorted_distinct_and_cover_the_range():
    g = torch.Generator().manual_seed(0)
    ids = randomized_ids(500, 10, 40, g)
    assert ids.shape == (500, 10)
    assert (ids.diff(dim=-1) > 0).all() and ids.min() >= 0 and ids.max() <= 39
    counts = torch.bincount(ids.flatten(), minlength=40).float()                # uniform: 125 per position
    assert counts.min() > 80 and counts.max() < 170


def test_task_batches_with_sampled_positions_are_reproducible(src):
    task = built_task(src, positions="pose", target_len=128)
    g = _epoch_generator(1, 0)
    batches = list(task.train_batches(0, g))
    again = list(task.train_batches(0, _epoch_generator(1, 0), start=2))
    assert all(torch.equal(a["positions"].ids, b["positions"].ids) and torch.equal(a["input_ids"], b["input_ids"])
               for a, b in zip(batches[2:], again))                            # resume: the same batches
    ids = torch.cat([b["positions"].ids for b in batches])
    assert ids.max() > 32 and ids.max() <= 127 and (ids.diff(dim=-1) >= 1).all()
    # the labels are the next tokens of the joined text
    b = batches[0]
    stream = task.train_stream["tokens"]
    assert torch.equal(b["input_ids"][:, 1:], b["labels"][:, :-1])
    rnd = built_task(src, positions="randomized", target_len=100)
    ids = torch.cat([b["positions"].ids for b in rnd.train_batches(0, _epoch_generator(1, 0))])
    assert (ids.diff(dim=-1) > 0).all() and ids.max() <= 99
    assert rnd.model_kwargs(build_config(lm_cfg(src, "x")))["max_seq_len"] == 100
    del stream


@pytest.mark.parametrize("data, match", [
    ({"positions": "pose"}, "needs data.target_len"),
    ({"positions": "pose", "target_len": 16}, "an int > data.seq_len=32"),
    ({"target_len": 64}, "only used with data.positions=pose or randomized"),
    ({"positions": "posed", "target_len": 64}, "one of contiguous, pose, randomized"),
    ({"packing": "pack"}, "one of stream, packed, padded"),
    ({"positions": "pose", "target_len": 64, "packing": "packed"}, "use it with data.packing=stream"),
])
def test_bad_long_context_keys_are_named(src, data, match):
    cfg = lm_cfg(src, "unused")
    cfg["data"].update(data)
    with pytest.raises(ConfigError, match=match):
        build_config(cfg)


# ---- packing ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["code_lm_rope_tiny", "code_lm_alibi_tiny", "code_lm_bipe_tiny"])
def test_a_packed_batch_loss_is_the_sum_of_its_documents_losses(src, model, one_thread):
    task = built_task(src, packing="packed")
    stream = task.train_stream
    docs = stream["docs"].long()
    boundary = int(torch.nonzero(docs.diff()).flatten()[0]) + 1               # first file boundary
    n = 48
    start = boundary - 20                                                      # a window across the boundary
    batch = gather_windows(stream, torch.tensor([start]), n, packed=True)
    pos = batch["positions"]
    assert pos.doc_ids.tolist()[0] == [0] * 20 + [1] * (n - 20)
    assert pos.ids.tolist()[0] == list(range(20)) + list(range(n - 20))
    assert batch["labels"][0, 19] == IGNORE_INDEX                              # no label across files
    torch.manual_seed(0)
    m = zoo.create(model, vocab_size=task.tokenizer.vocab_size, max_seq_len=64, **TINY).eval()
    with torch.no_grad():
        packed = F.cross_entropy(m(batch["input_ids"], pos).flatten(0, 1), batch["labels"].flatten(),
                                 ignore_index=IGNORE_INDEX, reduction="sum")
        alone = 0.0
        for a, e in ((0, 20), (20, n)):                                        # each file's part, on its own
            part = gather_windows(stream, torch.tensor([start + a]), e - a)
            labels = part["labels"].clone()
            if e == 20:
                labels[0, -1] = IGNORE_INDEX                                   # its last label is the next file's
            alone += F.cross_entropy(m(part["input_ids"], part["positions"]).flatten(0, 1), labels.flatten(),
                                     ignore_index=IGNORE_INDEX, reduction="sum")
        leaky = F.cross_entropy(m(batch["input_ids"], gather_windows(stream, torch.tensor([start]), n)["positions"])
                                .flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE_INDEX,
                                reduction="sum")
    assert packed.item() == pytest.approx(alone.item(), rel=1e-5)
    assert abs(leaky.item() - alone.item()) > 1e-3                             # without the masks: not the same


def test_padded_pieces_cover_every_prediction_once(src):
    task = built_task(src, packing="padded")
    stream = task.train_stream
    pieces = padded_pieces(stream, 32)
    offsets = torch.nonzero(stream["docs"].long().diff()).flatten() + 1
    lengths = torch.cat([offsets[:1], offsets.diff(), stream["docs"].numel() - offsets[-1:]])
    assert int(pieces[:, 1].sum()) == int((lengths - 1).sum())                 # every in-file next-token label
    assert task.num_train_samples() == pieces.shape[0]
    batch = padded_windows(stream, pieces[:5], 32)
    for row, (s, length) in enumerate(pieces[:5].tolist()):
        assert batch["positions"].mask[row].sum() == length
        assert torch.equal(batch["labels"][row, :length], stream["tokens"][s + 1:s + 1 + length].long())
        assert (batch["labels"][row, length:] == IGNORE_INDEX).all()
        assert len(set(stream["docs"][s:s + length + 1].tolist())) == 1         # one file per row


@pytest.mark.parametrize("data", [{"packing": "packed"}, {"packing": "padded"},
                                  {"positions": "pose", "target_len": 128}, {"positions": "randomized",
                                                                              "target_len": 96}])
def test_fine_tunes_with_each_mode(src, tmp_path, data, one_thread):
    cfg = lm_cfg(src, tmp_path / "run", steps=4)
    cfg["data"].update(data)
    summary = finetune(cfg)
    assert math.isfinite(summary["final"]["loss"])
    assert {k: summary["data"][k] for k in data} == data
