"""DeiT with iRPE: official key layout, parity with a naive re-implementation of Microsoft's DeiT-iRPE forward,
weight loading (local file, loopback download), overrides and bad input.

The reference `ref_deit_irpe` is written here from the official code's description (microsoft/Cream
iRPE/DeiT-with-iRPE/rpe_vision_transformer.py + irpe.py): it reads an official-format state dict
(``blocks.i.attn.rpe_k.lookup_table_weight``) and computes everything with explicit ops and loops.
"""
import functools
import http.server
import logging
import math
import threading

import pytest
import torch
import torch.nn.functional as F

import zoo
from zoo.errors import CheckpointError

TINY = dict(embed=192, heads=3)


# ---- naive reference of the official model -----------------------------------------------------------------------

def ref_g(x, ratio=1.9):
    alpha, beta, gamma = ratio, 2 * ratio, 8 * ratio
    if abs(x) <= alpha:
        return int(round(x))
    v = min(beta, round(alpha + math.log(abs(x) / alpha) / math.log(gamma / alpha) * (beta - alpha)))
    return int(math.copysign(v, x))


def ref_buckets(method, h, w, skip=1, ratio=1.9):
    """Bucket of every token pair (paper Eq. 18 + the official 2D methods), prefix pairs in the last bucket."""
    b = int(2 * ratio)
    n = skip + h * w
    extra = (2 * b + 1) ** 2 if method == "product" else 2 * b + 1
    out = [[extra] * n for _ in range(n)]
    for i in range(skip, n):
        for j in range(skip, n):
            (ri, ci), (rj, cj) = divmod(i - skip, w), divmod(j - skip, w)
            dr, dc = ri - rj, ci - cj
            out[i][j] = {"product": lambda: (ref_g(dr, ratio) + b) * (2 * b + 1) + (ref_g(dc, ratio) + b),
                         "euclidean": lambda: ref_g(round(math.sqrt(dr * dr + dc * dc)), ratio) + b,
                         "quant": lambda: ref_g(dr * dr + dc * dc, ratio) + b,
                         "rp_rows": lambda: ref_g(dr, ratio) + b,
                         "rp_cols": lambda: ref_g(dc, ratio) + b}[method]()
    return out


def ref_product_buckets(h, w, skip=1, ratio=1.9):
    return ref_buckets("product", h, w, skip, ratio)


def ref_deit_irpe(sd, x, num_heads, patch, pre_logits=False, method="product", ratio=1.9, tokens=False):
    """Official DeiT-iRPE forward (contextual, shared head, skip 1) on an official state dict, with iRPE on
    whichever of q, k, v the state dict has tables for (``attn.rpe_{q,k,v}.[rp_rows.|rp_cols.]lookup_table_weight``)."""
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    x = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch)
    gh, gw = x.shape[-2:]
    bsz, c = x.shape[0], x.shape[1]
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([sd["cls_token"].expand(bsz, -1, -1), x], dim=1) + sd["pos_embed"]
    n, d = x.shape[1], c // num_heads
    s = d ** -0.5
    parts = {"rp_rows.": "rp_rows", "rp_cols.": "rp_cols"} if method == "cross" else {"": method}
    bucket = {sub: ref_buckets(m, gh, gw, 1, ratio) for sub, m in parts.items()}
    for i in range(depth):
        p = f"blocks.{i}."
        y = F.layer_norm(x, (c,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps=1e-6)
        qkv = (y @ sd[p + "attn.qkv.weight"].T + sd[p + "attn.qkv.bias"]).reshape(bsz, n, 3, num_heads, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        q = q * s                                                  # scaled BEFORE rpe_k, as official
        attn = q @ k.transpose(-2, -1)
        rel = torch.zeros_like(attn)
        for sub, ids in bucket.items():
            tq, tk = (sd.get(p + f"attn.rpe_{where}.{sub}lookup_table_weight") for where in "qk")
            for a in range(n):                                     # query a against every key b
                if tk is not None:   # (1, D, nb): rel[a, b] += (q_a * s) . tk[:, bucket(a, b)]
                    rel[:, :, a, :] += (q[:, :, a, :, None] * tk[:, :, ids[a]]).sum(-2)
                if tq is not None:   # (1, D, nb): rel[a, b] += (k_b * s) . tq[:, bucket(b, a)]
                    col = [ids[b][a] for b in range(n)]
                    rel[:, :, a, :] += (k.transpose(-2, -1) * s * tq[:, :, col]).sum(-2)
        attn = (attn + rel).softmax(dim=-1)
        out = attn @ v
        for sub, ids in bucket.items():
            tv = sd.get(p + f"attn.rpe_v.{sub}lookup_table_weight")   # (1, nb, D)
            if tv is not None:       # out[a] += sum_b attn[a, b] tv[bucket(a, b)]
                for a in range(n):
                    out[:, :, a, :] += (attn[:, :, a, :, None] * tv[:, ids[a], :]).sum(-2)
        out = out.transpose(1, 2).reshape(bsz, n, c)
        x = x + out @ sd[p + "attn.proj.weight"].T + sd[p + "attn.proj.bias"]
        y = F.layer_norm(x, (c,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps=1e-6)
        y = F.gelu(y @ sd[p + "mlp.fc1.weight"].T + sd[p + "mlp.fc1.bias"])
        x = x + y @ sd[p + "mlp.fc2.weight"].T + sd[p + "mlp.fc2.bias"]
    x = F.layer_norm(x, (c,), sd["norm.weight"], sd["norm.bias"], eps=1e-6)
    if tokens:                                                     # every token after the final norm
        return x
    x = x[:, 0]
    return x if pre_logits else x @ sd["head.weight"].T + sd["head.bias"]


def official_sd(embed=192, heads=3, depth=2, img=56, patch=8, num_classes=1000, in_chans=3, nb=50, seed=0,
                rpe_on="k", cross=False, mode="contextual", table_heads=1, table_std=1.0):
    """A random state dict in the official DeiT-iRPE layout (``..._shared_k`` by default; ``rpe_on`` picks the
    tables, ``cross`` the ``rp_rows``/``rp_cols`` pairs); rpe tables far from zero."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, std=0.05, mean=0.0):
        return torch.randn(*shape, generator=g) * std + mean

    c, d = embed, embed // heads
    grid = (img // patch) ** 2
    sd = {"cls_token": r(1, 1, c, std=0.5), "pos_embed": r(1, 1 + grid, c, std=0.5),
          "patch_embed.proj.weight": r(c, in_chans, patch, patch, std=0.1), "patch_embed.proj.bias": r(c)}
    for i in range(depth):
        p = f"blocks.{i}."
        sd.update({
            p + "norm1.weight": r(c, std=0.1, mean=1.0), p + "norm1.bias": r(c),
            p + "attn.qkv.weight": r(3 * c, c, std=0.1), p + "attn.qkv.bias": r(3 * c),
            p + "attn.proj.weight": r(c, c), p + "attn.proj.bias": r(c),
            p + "norm2.weight": r(c, std=0.1, mean=1.0), p + "norm2.bias": r(c),
            p + "mlp.fc1.weight": r(4 * c, c), p + "mlp.fc1.bias": r(4 * c),
            p + "mlp.fc2.weight": r(c, 4 * c), p + "mlp.fc2.bias": r(c)})
        for where in rpe_on:
            for sub in (("rp_rows.", "rp_cols.") if cross else ("",)):
                key = p + f"attn.rpe_{where}.{sub}lookup_table_"
                if mode == "bias":
                    sd[key + "bias"] = r(table_heads, nb, std=table_std)
                else:
                    sd[key + "weight"] = r(table_heads, *((nb, d) if where == "v" else (d, nb)), std=table_std)
    sd.update({"norm.weight": r(c, std=0.1, mean=1.0), "norm.bias": r(c),
               "head.weight": r(num_classes, c), "head.bias": r(num_classes)})
    return sd


def images(b=2, c=3, h=56, w=56, seed=1):
    return torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    """Official-format ``{'model': sd, ...}`` for DeiT-Tiny iRPE at 56x56, patch 8 (7x7 grid), 2 blocks."""
    sd = official_sd()
    path = tmp_path_factory.mktemp("ckpt") / "deit_tiny_patch16_224_ctx_product_50_shared_k.pth"
    torch.save({"model": sd, "epoch": 299}, path)
    return path, sd


def _create_small(path, **kw):
    args = dict(img_size=56, patch_size=8, depth=2)
    args.update(kw)
    return zoo.create("vit_irpe_tiny", pretrained_file=str(path), **args).eval()


# ---- (a) official key layout --------------------------------------------------------------------------------------

def test_state_dict_matches_the_official_k_model_layout():
    with torch.device("meta"):
        model = zoo.create("vit_irpe_small")
    ours = {k.replace(".attn.pe.rpe_", ".attn.rpe_"): tuple(v.shape) for k, v in model.state_dict().items()}
    c, nb = 384, 50
    want = {"cls_token": (1, 1, c), "pos_embed": (1, 197, c), "patch_embed.proj.weight": (c, 3, 16, 16),
            "patch_embed.proj.bias": (c,), "norm.weight": (c,), "norm.bias": (c,), "head.weight": (1000, c),
            "head.bias": (1000,)}
    for i in range(12):
        p = f"blocks.{i}."
        want.update({p + "norm1.weight": (c,), p + "norm1.bias": (c,), p + "attn.qkv.weight": (3 * c, c),
                     p + "attn.qkv.bias": (3 * c,), p + "attn.proj.weight": (c, c), p + "attn.proj.bias": (c,),
                     p + "attn.rpe_k.lookup_table_weight": (1, 64, nb), p + "norm2.weight": (c,),
                     p + "norm2.bias": (c,), p + "mlp.fc1.weight": (4 * c, c), p + "mlp.fc1.bias": (4 * c,),
                     p + "mlp.fc2.weight": (c, 4 * c), p + "mlp.fc2.bias": (c,)})
    assert len(want) == 188 - 2 * 12                                # the qkv model's 188 keys minus q/v tables
    assert ours == want


# ---- (b) parity with the official forward -----------------------------------------------------------------------

def test_parity_with_naive_official_forward(small_file):
    path, sd = small_file
    model = _create_small(path)
    x = images()
    with torch.no_grad():
        got = model(x)
        want = ref_deit_irpe(sd, x, num_heads=3, patch=8)
        no_rpe = ref_deit_irpe({k: (torch.zeros_like(v) if "rpe_" in k else v) for k, v in sd.items()}, x, 3, 8)
    assert got.shape == (2, 1000)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert (want - no_rpe).abs().max() > 1e-2                      # the tables matter: the test is not vacuous
    assert type(model.blocks[0].attn.pe).__name__ == "IRPE" and not model.blocks[0].attn.pe.needs_weights


# ---- (c) pretrained=True through a loopback download -------------------------------------------------------------

class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_pretrained_download_from_loopback(small_file, tmp_path, monkeypatch):
    path, sd = small_file
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(path.parent)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        from zoo import registry
        cfg = registry._entry("vit_irpe_tiny").cfgs["in1k"]
        assert cfg.url == ("https://github.com/wkcn/iRPE-model-zoo/releases/download/1.0/"
                           "deit_tiny_patch16_224_ctx_product_50_shared_k.pth")
        monkeypatch.setattr(cfg, "url", f"http://127.0.0.1:{server.server_address[1]}/{path.name}")
        monkeypatch.setenv("ZOO_HOME", str(tmp_path))
        monkeypatch.delenv("ZOO_OFFLINE", raising=False)
        model = zoo.create("vit_irpe_tiny.in1k", pretrained=True, img_size=56, patch_size=8, depth=2).eval()
    finally:
        server.shutdown()
        server.server_close()
    assert list(tmp_path.rglob(path.name)), "the file was not cached under ZOO_HOME"
    x = images(seed=2)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref_deit_irpe(sd, x, 3, 8), atol=1e-4, rtol=1e-4)


# ---- (d) overrides ---------------------------------------------------------------------------------------------

def test_num_classes_override_keeps_a_fresh_head(small_file, caplog):
    path, sd = small_file
    with caplog.at_level(logging.WARNING):
        model = _create_small(path, num_classes=10)
    assert "head" in caplog.text
    assert model.head.weight.shape == (10, 192)
    x = images(seed=3)
    with torch.no_grad():
        logits = model(x)
        feats = model.forward_head(model.forward_features(x), pre_logits=True)
    assert logits.shape == (2, 10)
    torch.testing.assert_close(feats, ref_deit_irpe(sd, x, 3, 8, pre_logits=True), atol=1e-4, rtol=1e-4)


def test_img_size_change_resamples_pos_embed(small_file):
    import timm.layers
    path, sd = small_file
    model = _create_small(path, img_size=(64, 48))                 # 7x7 -> 8x6 grid
    want = timm.layers.resample_abs_pos_embed(sd["pos_embed"], [8, 6], [7, 7], num_prefix_tokens=1)
    torch.testing.assert_close(model.pos_embed.detach(), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.pos_embed[:, :1].detach(), sd["pos_embed"][:, :1])
    x = images(h=64, w=48)
    resampled = dict(sd, pos_embed=want)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref_deit_irpe(resampled, x, 3, 8), atol=1e-4, rtol=1e-4)


def test_patch_size_change_resamples_the_kernel(small_file):
    import timm.layers
    path, sd = small_file
    model = _create_small(path, img_size=28, patch_size=4)         # 8x8 kernel -> 4x4, grid stays 7x7
    want = timm.layers.resample_patch_embed(sd["patch_embed.proj.weight"], [4, 4])
    torch.testing.assert_close(model.patch_embed.proj.weight.detach(), want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(model.pos_embed.detach(), sd["pos_embed"])


def test_in_chans_1_sums_the_rgb_kernel(small_file):
    path, sd = small_file
    model = _create_small(path, in_chans=1, num_classes=10)
    torch.testing.assert_close(model.patch_embed.proj.weight.detach(),
                               sd["patch_embed.proj.weight"].sum(1, keepdim=True))
    gray = images(c=1)
    with torch.no_grad():  # a gray image through the summed kernel = the same image repeated on RGB
        torch.testing.assert_close(model.forward_head(model.forward_features(gray), pre_logits=True),
                                   ref_deit_irpe(sd, gray.expand(-1, 3, -1, -1), 3, 8, pre_logits=True),
                                   atol=1e-4, rtol=1e-4)


def test_depth_override_on_a_12_block_file(tmp_path):
    sd = official_sd(depth=12, img=32, patch=8, seed=4)
    path = tmp_path / "deep.pth"
    torch.save({"model": sd}, path)
    model = zoo.create("vit_irpe_tiny", pretrained_file=str(path), img_size=32, patch_size=8, depth=2).eval()
    assert len(model.blocks) == 2
    first_two = {k: v for k, v in sd.items() if not k.startswith("blocks.") or int(k.split(".")[1]) < 2}
    x = images(h=32, w=32, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref_deit_irpe(first_two, x, 3, 8), atol=1e-4, rtol=1e-4)


# ---- (e) bad input ------------------------------------------------------------------------------------------------

def test_wrong_image_size_and_channels():
    model = zoo.create("vit_irpe_tiny", img_size=56, patch_size=8, depth=1)
    with pytest.raises(ValueError, match=r"expected a 56x56 image, got 64x56.*dynamic_img_size=True.*img_size="):
        model(torch.randn(1, 3, 64, 56))
    with pytest.raises(ValueError, match=r"expected 3 input channel\(s\), got 1"):
        model(torch.randn(1, 1, 56, 56))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model(torch.randn(3, 56, 56))


def test_checkpoint_with_missing_and_unexpected_keys(tmp_path):
    sd = official_sd()
    del sd["blocks.1.mlp.fc2.bias"]
    sd["blocks.0.attn.extra_scale"] = torch.ones(1)
    path = tmp_path / "bad.pth"
    torch.save({"model": sd}, path)
    with pytest.raises(CheckpointError) as e:
        _create_small(path)
    assert "blocks.1.mlp.fc2.bias" in str(e.value) and "blocks.0.attn.extra_scale" in str(e.value)


def test_checkpoint_with_another_bucket_count(tmp_path):
    path = tmp_path / "euc20.pth"
    torch.save({"model": official_sd(nb=82)}, path)                 # a ratio-20 table
    with pytest.raises(CheckpointError, match=r"blocks\.0\.attn\.pe\.rpe_k\.lookup_table_weight.*"
                                              r"\(1, 64, 82\).*\(1, 64, 50\)"):
        _create_small(path)


# ---- (f) Fashion-MNIST geometry -----------------------------------------------------------------------------------

def test_fashion_mnist_geometry(monkeypatch):
    from zoo.pe.irpe import IRPE
    seen = []
    original = IRPE.grid

    def spy(self, n, pos):
        out = original(self, n, pos)
        seen.append((n, out))
        return out

    monkeypatch.setattr(IRPE, "grid", spy)
    model = zoo.create("vit_irpe_tiny", img_size=28, patch_size=4, in_chans=1, num_classes=10, depth=2)
    logits = model(torch.randn(5, 1, 28, 28))
    assert logits.shape == (5, 10) and torch.isfinite(logits).all()
    assert seen and set(seen) == {(50, (7, 7, 1))}
    assert model.config["img_size"] == 28 and model.config["pe_factory"]["method"] == "product"


# ---- (g) mixed precision ------------------------------------------------------------------------------------------

def test_autocast_bf16_forward_backward(small_file):
    path, _ = small_file
    model = _create_small(path).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(images()).float().logsumexp(-1).mean()
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["blocks.0.attn.pe.rpe_k.lookup_table_weight"].abs().sum() > 0


# ---- (h) timm ----------------------------------------------------------------------------------------------------

def test_timm_create_model_and_no_name_collisions():
    import timm
    from timm.models import _registry
    from domains.vision.models import VisionTransformer
    model = timm.create_model("vit_irpe_small", num_classes=5, depth=1)
    assert isinstance(model, VisionTransformer) and model.head.out_features == 5
    timm_own = {n for n, fn in _registry._model_entrypoints.items() if not hasattr(fn, "_zoo_name")}
    ours = set(zoo.list_models())
    assert {"vit_irpe_tiny", "vit_irpe_small", "vit_irpe_base", "vit_ape_tiny", "vit_ape_small"} <= ours
    assert not ours & timm_own
    assert {"vit_irpe_small", "vit_ape_tiny"} <= set(timm.list_models())


# ---- dynamic image size and the APE baseline ----------------------------------------------------------------------

def test_dynamic_img_size(small_file):
    import timm.layers
    path, sd = small_file
    model = _create_small(path, dynamic_img_size=True)
    x = images(h=40, w=64)
    want_pe = timm.layers.resample_abs_pos_embed(sd["pos_embed"], [5, 8], [7, 7], num_prefix_tokens=1)
    with torch.no_grad():
        got = model(x)
        again = model(x)
    assert len(model._ape_cache) == 1                               # cached in eval
    torch.testing.assert_close(got, ref_deit_irpe(dict(sd, pos_embed=want_pe), x, 3, 8), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(again, got)
    with pytest.raises(ValueError, match="not divisible by the patch size"):
        model(images(h=41, w=64))


def test_ape_baseline_has_no_relative_encoding():
    model = zoo.create("vit_ape_tiny", img_size=32, patch_size=8, depth=2, num_classes=7)
    assert all(blk.attn.pe is None for blk in model.blocks)
    assert not any("rpe" in k for k in model.state_dict())
    out = model(torch.randn(2, 3, 32, 32))
    out.sum().backward()
    assert out.shape == (2, 7) and model.pos_embed.grad is not None


def test_ape_baseline_equals_timm_deit_on_timm_weights(tmp_path):
    """The backbone is timm's DeiT: a timm state dict loads unchanged and gives timm's logits."""
    import timm
    torch.manual_seed(0)
    ref = timm.create_model("deit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, num_classes=10).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path = tmp_path / "timm.pth"
    torch.save(ref.state_dict(), path)
    model = zoo.create("vit_ape_tiny", pretrained_file=str(path), img_size=32, patch_size=8, depth=2,
                       num_classes=10).eval()
    x = images(h=32, w=32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), atol=1e-5, rtol=1e-5)


def test_own_state_dict_round_trip(tmp_path):
    model = zoo.create("vit_irpe_tiny", img_size=32, patch_size=8, depth=2, irpe=dict(rpe_on="qkv")).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lookup_table" in n:
                p.normal_()
    path = tmp_path / "own.pth"
    torch.save(model.state_dict(), path)
    again = zoo.create("vit_irpe_tiny", pretrained_file=str(path), img_size=32, patch_size=8, depth=2,
                       irpe=dict(rpe_on="qkv")).eval()
    assert again.blocks[0].attn.pe.needs_weights
    x = images(h=32, w=32)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), atol=0, rtol=0)


# ---- (i) the other official configurations -----------------------------------------------------------------------

PREFIX = "https://github.com/wkcn/iRPE-model-zoo/releases/download/1.0/"
RELEASED = {  # entrypoint -> (official checkpoint, top-1 in the official README)
    "vit_irpe_tiny": ("deit_tiny_patch16_224_ctx_product_50_shared_k", 73.7),
    "vit_irpe_small": ("deit_small_patch16_224_ctx_product_50_shared_k", 80.9),
    "vit_irpe_small_qk": ("deit_small_patch16_224_ctx_product_50_shared_qk", 81.0),
    "vit_irpe_small_qkv": ("deit_small_patch16_224_ctx_product_50_shared_qkv", 81.2),
    "vit_irpe_base": ("deit_base_patch16_224_ctx_product_50_shared_k", 82.3),
    "vit_irpe_base_qkv": ("deit_base_patch16_224_ctx_product_50_shared_qkv", 82.8),
}
# entrypoint -> (method, ratio, rpe_on, table size): official rpe_models.py configs, all contextual, shared, skip 1
VARIANTS = {
    "vit_irpe_small_qk": ("product", 1.9, "qk", 50),
    "vit_irpe_small_qkv": ("product", 1.9, "qkv", 50),
    "vit_irpe_base_qkv": ("product", 1.9, "qkv", 50),
    "vit_irpe_small_euc": ("euclidean", 20, "k", 82),
    "vit_irpe_small_quant": ("quant", 33, "k", 134),
    "vit_irpe_small_cross": ("cross", 20, "k", 82),
}


def test_cfgs_urls_and_reported_top1():
    from zoo import registry
    for name, (ckpt, top1) in RELEASED.items():
        cfg = registry._entry(name).cfgs["in1k"]
        assert cfg.url == PREFIX + ckpt + ".pth" and cfg.metrics == {"top1": top1}, name
    for name in ("vit_irpe_small_euc", "vit_irpe_small_quant", "vit_irpe_small_cross"):
        assert registry._entry(name).cfgs == {}                    # official configs, weights never released
        with pytest.raises(zoo.errors.UnknownModelError, match="no pretrained weights"):
            zoo.create(name, pretrained=True, depth=1)
    assert set(zoo.list_models("vit_irpe_*", pretrained=True)) == {f"{n}.in1k" for n in RELEASED}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_encoding_at_full_size(name):
    method, ratio, rpe_on, nb = VARIANTS[name]
    with torch.device("meta"):
        model = zoo.create(name)
    pe = model.blocks[11].attn.pe
    assert (pe.method, pe.ratio, pe.rpe_on, pe.mode, pe.shared_head, pe.skip, pe.num_buckets) == \
        (method, ratio, rpe_on, "contextual", True, 1, nb)
    d = 64
    tables = {k.split("attn.pe.")[1]: tuple(v.shape) for k, v in model.state_dict().items()
              if k.startswith("blocks.0.attn.pe.")}
    subs = ("rp_rows.", "rp_cols.") if method == "cross" else ("",)
    assert tables == {f"rpe_{w}.{s}lookup_table_weight": ((1, nb, d) if w == "v" else (1, d, nb))
                      for w in rpe_on for s in subs}


def test_state_dict_matches_the_official_qkv_model_layout():
    with torch.device("meta"):
        model = zoo.create("vit_irpe_small_qkv")
    ours = {k.replace(".attn.pe.rpe_", ".attn.rpe_"): tuple(v.shape) for k, v in model.state_dict().items()}
    assert len(ours) == 188
    assert ours["blocks.3.attn.rpe_q.lookup_table_weight"] == (1, 64, 50)
    assert ours["blocks.3.attn.rpe_k.lookup_table_weight"] == (1, 64, 50)
    assert ours["blocks.3.attn.rpe_v.lookup_table_weight"] == (1, 50, 64)
    assert ours["pos_embed"] == (1, 197, 384) and ours["blocks.0.attn.qkv.bias"] == (1152,)


@pytest.mark.parametrize("name,file_depth,model_depth", [
    ("vit_irpe_small_qk", 2, 2),
    ("vit_irpe_small_qkv", 3, 2),
    ("vit_irpe_base_qkv", 2, 2),
    ("vit_irpe_small_euc", 3, 2),          # depth 1 would be vacuous: rpe_k cannot move the cls row
    ("vit_irpe_small_quant", 3, 2),
    ("vit_irpe_small_cross", 2, 2),
])
def test_variant_parity_with_naive_official_forward(name, file_depth, model_depth, tmp_path):
    """An official-format file of each configuration (6x6 grid: quant's log range is reached) loads with
    pretrained_file= and gives the naive official forward's logits; a deeper file loads into depth=."""
    method, ratio, rpe_on, nb = VARIANTS[name]
    sd = official_sd(embed=48, heads=3, depth=file_depth, img=48, patch=8, nb=nb, rpe_on=rpe_on,
                     cross=method == "cross", seed=21)
    path = tmp_path / "official.pth"
    torch.save({"model": sd, "epoch": 299}, path)
    model = zoo.create(name, pretrained_file=str(path), img_size=48, patch_size=8, embed_dim=48, num_heads=3,
                       depth=model_depth).eval()
    kept = {k: v for k, v in sd.items() if not k.startswith("blocks.") or int(k.split(".")[1]) < model_depth}
    x = images(h=48, w=48, seed=22)
    with torch.no_grad():
        got = model(x)
        want = ref_deit_irpe(kept, x, 3, 8, method=method, ratio=ratio)
        feats = model.forward_features(x)
        want_feats = ref_deit_irpe(kept, x, 3, 8, method=method, ratio=ratio, tokens=True)
        no_rpe = ref_deit_irpe({k: v for k, v in kept.items() if "rpe_" not in k}, x, 3, 8, tokens=True)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(feats, want_feats, atol=1e-4, rtol=1e-4)
    assert (want_feats - no_rpe).abs().max() > 1e-1                # the tables matter on the patch tokens
    assert len(model.blocks) == model_depth
    assert model.blocks[0].attn.pe.needs_weights == ("v" in rpe_on)


def test_pretrained_qkv_download_from_loopback(tmp_path, monkeypatch):
    sd = official_sd(embed=48, heads=3, depth=2, img=32, patch=8, rpe_on="qkv", seed=23)
    served = tmp_path / "srv"
    served.mkdir()
    name = RELEASED["vit_irpe_small_qkv"][0] + ".pth"
    torch.save({"model": sd, "epoch": 299, "args": None}, served / name)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        from zoo import registry
        cfg = registry._entry("vit_irpe_small_qkv").cfgs["in1k"]
        monkeypatch.setattr(cfg, "url", f"http://127.0.0.1:{server.server_address[1]}/{name}")
        monkeypatch.setenv("ZOO_HOME", str(tmp_path / "home"))
        monkeypatch.delenv("ZOO_OFFLINE", raising=False)
        model = zoo.create("vit_irpe_small_qkv", pretrained=True, img_size=32, patch_size=8, embed_dim=48,
                           num_heads=3, depth=2).eval()
    finally:
        server.shutdown()
        server.server_close()
    x = images(h=32, w=32, seed=24)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref_deit_irpe(sd, x, 3, 8), atol=1e-4, rtol=1e-4)


# ---- (j) a checkpoint of another iRPE configuration ----------------------------------------------------------------

@pytest.mark.parametrize("name,file_kw,pattern", [
    # a cross checkpoint into a product model: names the cross table and the table the model wanted
    ("vit_irpe_small", dict(cross=True, nb=82),
     r"blocks\.0\.attn\.pe\.rpe_k\.rp_(rows|cols)\.lookup_table_weight \(1, 16, 82\).*model lacks.*"
     r"blocks\.0\.attn\.pe\.rpe_k\.lookup_table_weight \(1, 16, 50\).*method=product"),
    # a product checkpoint into the cross model
    ("vit_irpe_small_cross", dict(nb=50),
     r"checkpoint has blocks\.0\.attn\.pe\.rpe_k\.lookup_table_weight \(1, 16, 50\).*"
     r"blocks\.0\.attn\.pe\.rpe_k\.rp_cols\.lookup_table_weight \(1, 16, 82\)"),
    # a ratio-20 (82-bucket) table into a ratio-1.9 model, and back
    ("vit_irpe_small", dict(nb=82),
     r"blocks\.0\.attn\.pe\.rpe_k\.lookup_table_weight: checkpoint shape \(1, 16, 82\) vs model shape "
     r"\(1, 16, 50\).*ratio=1\.9"),
    ("vit_irpe_small_euc", dict(nb=50),
     r"rpe_k\.lookup_table_weight: checkpoint shape \(1, 16, 50\) vs model shape \(1, 16, 82\).*ratio=20"),
    # quant's 134 buckets into euclidean's 82
    ("vit_irpe_small_euc", dict(nb=134), r"\(1, 16, 134\) vs model shape \(1, 16, 82\)"),
    # tables on q, k, v into a model with iRPE on k only
    ("vit_irpe_small", dict(rpe_on="qkv"),
     r"checkpoint has blocks\.0\.attn\.pe\.rpe_q\.lookup_table_weight \(1, 16, 50\) \(\+3 more\).*rpe_on='qkv'"),
    # per-head tables into a shared-head model; bias-mode tables into a contextual model
    ("vit_irpe_small", dict(table_heads=3), r"rpe_k\.lookup_table_weight: checkpoint shape \(3, 16, 50\) vs model "
                                            r"shape \(1, 16, 50\).*shared_head=True"),
    ("vit_irpe_small", dict(mode="bias"),
     r"rpe_k\.lookup_table_bias \(1, 50\).*mode=contextual.*checkpoint: .*, bias,"),
])
def test_checkpoint_of_another_irpe_configuration(name, file_kw, pattern, tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"model": official_sd(embed=48, heads=3, depth=2, img=32, patch=8, **file_kw)}, path)
    with pytest.raises(CheckpointError, match=pattern):
        zoo.create(name, pretrained_file=str(path), img_size=32, patch_size=8, embed_dim=48, num_heads=3, depth=2)
