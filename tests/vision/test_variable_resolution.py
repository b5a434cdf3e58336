"""Variable resolution: every registered vision classifier, built tiny with ``dynamic_img_size=True``, runs at a
160x224-proportioned (5:7) input and at twice its training size. Relative encodings follow the grid as they are;
a learned absolute table is resampled to the (rectangular) grid; a repeated size reuses the resampled table and
the iRPE bucket ids instead of recomputing them.

The model list is read from the registry at collection time, so families registered by other modules
(``cpvt_*``, ``vit_rope_*``, ``lightnet_*``, ``vit_rmt_*``, ...) are covered as soon as they exist. Detection
models (``detr*``) are not classifiers and are left out.
"""
import pytest
import torch

import zoo
import zoo.pe.irpe as irpe_mod
import zoo.pe.learned as learned_mod
from zoo.registry import _REGISTRY

# Models that cannot take dynamic_img_size=True, with the reason. Each of them must refuse it with an error
# naming `dynamic_img_size`; the test says so instead of skipping. Empty: every family supports it.
NO_DYNAMIC_IMG_SIZE = {}

TRAIN_SIZE, PATCH, CLASSES = 32, 4, 10      # an 8x8 training grid


def vision_classifiers():
    return [n for n in zoo.list_models() if _REGISTRY[n].domain == "vision" and not n.startswith("detr")]


def build_tiny(name, **kw):
    """The smallest build the entrypoint accepts: width 48 / 3 heads / 1 block if it takes those, else depth=1."""
    last = None
    for geometry in (dict(img_size=TRAIN_SIZE, patch_size=PATCH, num_classes=CLASSES), dict(num_classes=CLASSES)):
        for tiny in (dict(embed_dim=48, num_heads=3, depth=1), dict(depth=1)):
            try:
                return zoo.create(name, **geometry, **tiny, **kw)
            except TypeError as e:          # an override this builder does not take
                last = e
    raise last


def geometry(model):
    """(training size, patch, 5:7 size, double size) of a built model, in pixels."""
    (th, tw), (ph, pw) = tuple(model.img_size), tuple(model.patch_size)
    m = max(1, round(tw / pw / 7))
    return (th, tw), (ph, pw), (5 * m * ph, 7 * m * pw), (2 * th, 2 * tw)


@pytest.fixture
def recompute_counter(monkeypatch):
    """Counts resamplings of learned position tables and iRPE bucket-id computations (both caches cleared)."""
    counts = {"resample": 0, "buckets": 0}
    resample, piecewise = learned_mod.resample_abs_pos_embed, irpe_mod.piecewise_index

    def counting_resample(*a, **k):
        counts["resample"] += 1
        return resample(*a, **k)

    def counting_piecewise(*a, **k):
        counts["buckets"] += 1
        return piecewise(*a, **k)

    monkeypatch.setattr(learned_mod, "resample_abs_pos_embed", counting_resample)
    monkeypatch.setattr(irpe_mod, "piecewise_index", counting_piecewise)
    irpe_mod._bucket_ids_cached.cache_clear()
    irpe_mod._flat_index_cached.cache_clear()
    yield counts
    irpe_mod._bucket_ids_cached.cache_clear()     # drop the entries built through the counter
    irpe_mod._flat_index_cached.cache_clear()


@pytest.fixture
def irpe_grids(monkeypatch):
    """The ``(h, w, skip)`` of every `IRPE.grid` call, in order."""
    seen = []
    grid = irpe_mod.IRPE.grid

    def spy(self, n, pos):
        out = grid(self, n, pos)
        seen.append(out)
        return out

    monkeypatch.setattr(irpe_mod.IRPE, "grid", spy)
    return seen


def test_the_registry_lists_the_vision_classifiers():
    names = vision_classifiers()
    assert {"vit_irpe_tiny", "vit_irpe_small", "vit_irpe_small_qkv", "vit_irpe_small_cross",
            "vit_ape_tiny"} <= set(names)
    assert not any(n.startswith("detr") for n in names)
    assert set(NO_DYNAMIC_IMG_SIZE) <= set(names), "the allow-list names models that are not registered"


@pytest.mark.parametrize("name", vision_classifiers())
def test_rectangular_and_double_size(name, recompute_counter):
    if name in NO_DYNAMIC_IMG_SIZE:
        with pytest.raises((TypeError, ValueError), match="dynamic_img_size"):
            build_tiny(name, dynamic_img_size=True)
        return
    torch.manual_seed(0)
    model = build_tiny(name, dynamic_img_size=True).eval()
    train, patch, rect, double = geometry(model)
    assert rect[0] * 7 == rect[1] * 5 and rect != train       # 160:224
    c = getattr(model, "in_chans", 3)
    inputs = {size: torch.randn(2, c, *size, generator=torch.Generator().manual_seed(1)) for size in (rect, double)}
    first = {}
    with torch.no_grad():
        for size, x in inputs.items():
            out = model(x)
            assert out.shape == (2, CLASSES) and torch.isfinite(out).all(), (name, size)
            first[size] = out
    after_first = dict(recompute_counter)
    ape = getattr(model, "pos_embed", None)
    if ape is not None and hasattr(model, "_ape_cache"):
        assert after_first["resample"] == 2                     # one rectangular, one square resampling
        grids = [(s[0] // patch[0], s[1] // patch[1]) for s in (rect, double)]
        want = {g: (1, model.num_prefix_tokens + g[0] * g[1], ape.shape[-1]) for g in grids}
        assert {k[:2]: tuple(v.shape) for k, v in model._ape_cache.items()} == want
    if any(isinstance(m, irpe_mod.IRPE) for m in model.modules()):
        assert after_first["buckets"] > 0
    with torch.no_grad():                                       # sizes again, alternating: nothing recomputed
        for size, x in inputs.items():
            torch.testing.assert_close(model(x), first[size], atol=0, rtol=0)
    assert recompute_counter == after_first, f"{name}: a repeated size recomputed {recompute_counter} vs {after_first}"


@pytest.mark.parametrize("name", vision_classifiers())
def test_rectangular_input_without_dynamic_img_size(name):
    """Built with its defaults, a model either runs a rectangular image as it is (size-agnostic families) or
    refuses it with an error that says what to pass; never a shape error from deep inside."""
    model = build_tiny(name).eval()
    train, patch, rect, _ = geometry(model)
    x = torch.randn(1, getattr(model, "in_chans", 3), *rect)
    if getattr(model, "dynamic_img_size", None) is not False:     # size-agnostic (e.g. LightNet: no flag at all)
        with torch.no_grad():
            assert torch.isfinite(model(x)).all()
        return
    with pytest.raises(ValueError, match=rf"expected a {train[0]}x{train[1]} image, got {rect[0]}x{rect[1]}.*"
                                         r"dynamic_img_size=True"):
        model(x)


# ---- the iRPE models in detail -------------------------------------------------------------------------------------

def test_irpe_follows_the_grid_and_caches(irpe_grids, recompute_counter):
    model = zoo.create("vit_irpe_tiny", img_size=32, patch_size=4, depth=2, embed_dim=48, num_heads=3,
                       dynamic_img_size=True, irpe=dict(rpe_on="qkv")).eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 20, 28))
    assert set(irpe_grids) == {(5, 7, 1)}
    # the resampled table and the gather index are the same tensors on a repeated size, also after another size
    with torch.no_grad():
        a = model._pos_embed_for(5, 7)
        model._pos_embed_for(16, 16)
        assert model._pos_embed_for(5, 7) is a and a.shape == (1, 1 + 35, 48)
    pe = model.blocks[0].attn.pe
    pos = model.positions(5, 7, "cpu")
    assert model.positions(5, 7, "cpu") is pos
    flat = pe._index("product", 36, pos, "cpu")[1]
    assert pe._index("product", 36, pos, "cpu")[1] is flat
    # a changed parameter invalidates the resampled table
    with torch.no_grad():
        model.pos_embed.add_(1.0)
        b = model._pos_embed_for(5, 7)
    assert b is not a and torch.allclose(b, a + 1.0, atol=1e-4)


def test_irpe_dynamic_size_trains(recompute_counter):
    """In training the resampled table is not cached (it must carry the gradient to pos_embed)."""
    model = zoo.create("vit_irpe_tiny", img_size=32, patch_size=4, depth=1, embed_dim=48, num_heads=3,
                       num_classes=5, dynamic_img_size=True, irpe=dict(rpe_on="qkv")).train()
    model(torch.randn(2, 3, 20, 28)).logsumexp(-1).sum().backward()
    assert model.pos_embed.grad is not None and model.pos_embed.grad.abs().sum() > 0
    assert all(p.grad is not None for n, p in model.named_parameters() if "lookup_table" in n)
    assert not model._ape_cache


@pytest.mark.parametrize("size", [(160, 224), (448, 448)])
def test_vit_irpe_small_full_geometry(size, irpe_grids):
    torch.manual_seed(0)
    model = zoo.create("vit_irpe_small", dynamic_img_size=True).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()
    h, w = size[0] // 16, size[1] // 16
    assert set(irpe_grids) == {(h, w, 1)} and len(irpe_grids) == 12
    assert model._pos_embed_for(h, w).shape == (1, 1 + h * w, 384)
