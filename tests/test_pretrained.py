"""``pretrained=True`` for every registered pretrained tag, offline: hf-hub tags from a populated Hugging Face cache
and downloaded the first time from a loopback Hugging Face endpoint, URL tags from the zoo cache and through a
loopback HTTP server.  Each cached file is written in its source's own layout (timm's ``model.safetensors``; DeiT's
``{'model': timm sd}``; the official iRPE and DETR-with-iRPE ``{'model': sd}``), and the loaded model is checked
against the source library's logits (timm) or against the official tensors and the naive official forward.

The width and heads of each released model are kept; depth and image size are cut down (the filters take a file
of the model's depth) so the whole file runs in seconds.
"""
from __future__ import annotations

import functools
import hashlib
import http.server
import socket
import threading
import urllib.parse
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Dict

import pytest
import torch

import zoo
from zoo import hub, registry
from zoo.errors import ChecksumError
from support.modules import load_test_module

HERE = Path(__file__).parent
TAGS = zoo.list_models(pretrained=True)
DEPTH, IMG = 2, 48                                     # a 3x3 grid of 16-pixel patches


def _load_test_module(rel: str):
    """A helper module of another test file (the official-format builders and references written there)."""
    return load_test_module(HERE / rel, "_pretrained_ref")


def _images(seed=3):
    return torch.randn(1, 3, IMG, IMG, generator=torch.Generator().manual_seed(seed))


def _randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter away from its init (zero heads, unit layer scales), so nothing matches by accident."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn(p.shape, generator=g) * (0.5 if name.endswith("freqs") else 0.05))
    return model.eval()


# ---- one published file per tag, and what the model loaded from it must equal ------------------------------------

@dataclass
class Published:
    data: bytes                                        # the file's bytes, in the source's layout
    kwargs: dict                                       # zoo.create arguments (depth / image size cut down)
    check: Callable[[torch.nn.Module], None]           # asserts on the loaded model


def _save(obj) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _assert_logits(model, want, x):
    with torch.no_grad():
        got = model.eval()(x)
    assert want.abs().max() > 0.1                      # not a degenerate comparison
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def _rope_vit(tag: str, cfg) -> Published:
    """timm's ``vit_*_patch16_rope*_224.naver_in1k`` repository holds timm's state dict as model.safetensors."""
    import timm
    from safetensors.torch import save

    timm_name = cfg.hf_hub_id.split("/", 1)[1].rsplit(".", 1)[0]
    torch.manual_seed(0)
    ref = _randomise(timm.create_model(timm_name, depth=DEPTH, img_size=IMG), seed=1)
    x = _images()
    with torch.no_grad():
        want = ref(x)
    return Published(save({k: v.contiguous() for k, v in ref.state_dict().items()}),
                     dict(depth=DEPTH, img_size=IMG), lambda m: _assert_logits(m, want, x))


def _deit(tag: str, cfg) -> Published:
    """facebookresearch/deit releases ``{'model': sd}`` with timm's keys: the reference is timm's DeiT."""
    import timm

    timm_name = PurePosixPath(cfg.url).name.split("-")[0]          # deit_tiny_patch16_224-a1311bcf.pth
    torch.manual_seed(0)
    ref = _randomise(timm.create_model(timm_name, depth=DEPTH, img_size=IMG), seed=2)
    x = _images()
    with torch.no_grad():
        want = ref(x)
    return Published(_save({"model": ref.state_dict()}), dict(depth=DEPTH, img_size=IMG),
                     lambda m: _assert_logits(m, want, x))


def _irpe_vit(tag: str, cfg) -> Published:
    """microsoft/Cream iRPE releases ``{'model': sd}`` in the official DeiT-iRPE layout; the reference is the naive
    official forward of tests/vision/test_vit_irpe.py."""
    ref = _load_test_module("vision/test_vit_irpe.py")
    with torch.device("meta"):
        meta = zoo.create(tag.split(".")[0], depth=1)
    embed, heads = meta.embed_dim, meta.blocks[0].attn.num_heads
    rpe_on = PurePosixPath(cfg.url).stem.rsplit("_", 1)[1]           # ..._shared_k / _qk / _qkv
    sd = ref.official_sd(embed=embed, heads=heads, depth=DEPTH, img=IMG, patch=16, rpe_on=rpe_on, seed=4)
    x = _images()
    want = ref.ref_deit_irpe(sd, x, heads, 16)

    def check(model):
        own = model.state_dict()
        for k, v in sd.items():                                      # every official tensor, under our name
            ours = k.replace(".attn.rpe_", ".attn.pe.rpe_")
            assert torch.equal(own[ours], v), k
        _assert_logits(model, want, x)

    return Published(_save({"model": sd, "epoch": 299}), dict(depth=DEPTH, img_size=IMG), check)


def _detr(tag: str, cfg) -> Published:
    """The official DETR-with-iRPE release ``{'model': sd, 'args': ...}`` (tests/vision/test_detr.py writes the
    layout); the backbone's features are checked against torchvision's ResNet-50 holding the same tensors."""
    import torchvision
    from torchvision.ops.misc import FrozenBatchNorm2d

    ref = _load_test_module("vision/test_detr.py")
    sd = ref.official_state_dict(backbone="resnet50", d=256, nheads=8, enc=1, dec=1, ffn=2048, queries=100,
                                 classes=91, seed=5)
    for k, v in sd.items():                            # backbone statistics of a trained net: finite features
        if k.startswith("backbone.0.body."):
            if v.ndim == 4:
                sd[k] = v / v[0].numel() ** 0.5
            elif k.endswith("running_var"):
                sd[k] = v.abs() + 0.5
            elif k.endswith(("running_mean", "bias")):
                sd[k] = 0.1 * v
            else:
                sd[k] = 1.0 + 0.1 * v
    net = torchvision.models.resnet50(weights=None, norm_layer=FrozenBatchNorm2d).eval()
    body = {k[len("backbone.0.body."):]: v for k, v in sd.items() if k.startswith("backbone.0.body.")}
    missing, unexpected = net.load_state_dict(body, strict=False)
    assert set(missing) == {"fc.weight", "fc.bias"} and not unexpected
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(6))

    def check(model):
        m = model.transformer
        torch.testing.assert_close(m.encoder.layers[0].self_attn.pe.rpe_k.lookup_table_weight,
                                   sd["transformer.encoder.layers.0.self_attn.rpe_k.lookup_table_weight"],
                                   rtol=0, atol=0)
        torch.testing.assert_close(m.decoder.layers[0].cross_attn.qkv.weight,
                                   sd["transformer.decoder.layers.0.multihead_attn.in_proj_weight"], rtol=0, atol=0)
        torch.testing.assert_close(model.class_embed.weight, sd["class_embed.weight"], rtol=0, atol=0)
        torch.testing.assert_close(model.query_embed.weight, sd["query_embed.weight"], rtol=0, atol=0)
        with torch.no_grad():
            want = net.layer4(net.layer3(net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x))))))))
            got = model.eval().backbone.body(x)
            out = model(x)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
        assert out["pred_logits"].shape == (1, 100, 92) and torch.isfinite(out["pred_boxes"]).all()

    return Published(_save({"model": sd, "epoch": 149}), dict(enc_layers=1, dec_layers=1), check)


def _published_for(tag: str) -> Published:
    entry = registry._entry(tag)
    cfg = entry.cfgs[tag.split(".", 1)[1]]
    module = entry.fn.__module__
    if module == "domains.vision.rope_vit" and cfg.hf_hub_id:
        return _rope_vit(tag, cfg)
    if module == "domains.vision.models" and cfg.url and "/deit/" in cfg.url:
        return _deit(tag, cfg)
    if module == "domains.vision.models" and cfg.url and "iRPE-model-zoo" in cfg.url:
        return _irpe_vit(tag, cfg)
    if module == "domains.vision.detr" and cfg.url:
        return _detr(tag, cfg)
    raise AssertionError(f"no published-file writer for {tag} ({cfg.source_string()}): add one to this file")


_CACHE: Dict[str, Published] = {}


def published(tag: str) -> Published:
    if tag not in _CACHE:
        _CACHE[tag] = _published_for(tag)
    return _CACHE[tag]


def _cfg(tag):
    return registry._entry(tag).cfgs[tag.split(".", 1)[1]]


HF_TAGS = [t for t in TAGS if _cfg(t).hf_hub_id and not _cfg(t).url]
URL_TAGS = [t for t in TAGS if _cfg(t).url]


def test_every_pretrained_tag_is_covered():
    assert len(TAGS) >= 13 and set(TAGS) == set(HF_TAGS) | set(URL_TAGS)
    assert {t.split(".")[0] for t in HF_TAGS} == {"vit_rope_small", "vit_rope_mixed_small", "vit_rope_base",
                                                  "vit_rope_mixed_base"}


# ---- (a) hf-hub tags from a populated Hugging Face cache ---------------------------------------------------------

@pytest.mark.parametrize("tag", HF_TAGS)
def test_hf_hub_tag_loads_offline_from_the_hf_cache(tag, tmp_path, monkeypatch):
    from huggingface_hub import constants

    cfg = _cfg(tag)
    pub = published(tag)
    hf_home = tmp_path / "hf"
    cache = hf_home / "hub"
    rev = hashlib.sha1(pub.data).hexdigest()
    repo = cache / ("models--" + cfg.hf_hub_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    snap = repo / "snapshots" / rev
    snap.mkdir(parents=True)
    (snap / cfg.filename).write_bytes(pub.data)
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))    # read once at import by huggingface_hub
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    pub.check(zoo.create(tag, pretrained=True, **pub.kwargs))


# ---- (a) hf-hub tags: the first download, from a loopback Hugging Face endpoint -----------------------------------

class _FakeHubHandler(http.server.BaseHTTPRequestHandler):
    """``HEAD`` / ``GET {endpoint}/{repo_id}/resolve/{revision}/{file}`` answered as the Hub answers for an LFS file
    (``X-Repo-Commit``, ``X-Linked-Etag``, ``X-Linked-Size``, no ``X-Xet-Hash``, so huggingface_hub takes its plain
    HTTP download); 404 for anything else.  ``server.files`` maps a path to ``(bytes, commit)``; ``server.seen``
    records ``(method, path)`` of every request."""

    def _answer(self, send_body: bool):
        path = urllib.parse.unquote(self.path)
        self.server.seen.append((self.command, path))
        if path not in self.server.files:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data, commit = self.server.files[path]
        etag = hashlib.sha256(data).hexdigest()
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("ETag", f'"{etag}"')
        self.send_header("X-Linked-Etag", f'"{etag}"')
        self.send_header("X-Linked-Size", str(len(data)))
        self.send_header("X-Repo-Commit", commit)
        self.end_headers()
        if send_body:
            self.wfile.write(data)

    def do_HEAD(self):
        self._answer(send_body=False)

    def do_GET(self):
        self._answer(send_body=True)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_hub(monkeypatch):
    """A Hugging Face endpoint on 127.0.0.1 that huggingface_hub is pointed at (``HF_ENDPOINT``, and the endpoint and
    URL template huggingface_hub's constants read from it at import); ``fake_hub.stop()`` takes it down."""
    from huggingface_hub import constants

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeHubHandler)
    server.files, server.seen = {}, []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()

    def stop():
        server.shutdown()
        server.server_close()
        thread.join(5)

    server.stop = stop
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    try:
        yield server
    finally:
        stop()


@pytest.mark.parametrize("tag", [t for t in TAGS if _cfg(t).hf_hub_id])
def test_hf_hub_tag_first_download_from_the_hub(tag, tmp_path, monkeypatch, fake_hub):
    from huggingface_hub import constants

    cfg = _cfg(tag)
    pub = published(tag)
    repo_id, _, revision = cfg.hf_hub_id.partition("@")
    commit = hashlib.sha1(pub.data).hexdigest()
    wanted = f"/{repo_id}/resolve/{revision or 'main'}/{cfg.filename}"
    fake_hub.files[wanted] = (pub.data, commit)
    hf_home = tmp_path / "hf"
    cache = hf_home / "hub"                            # empty: nothing downloaded yet
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))    # read once at import by huggingface_hub
    for var in ("HF_HUB_OFFLINE", "ZOO_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    pub.check(zoo.create(tag, pretrained=True, **pub.kwargs))
    # the file of the repository, by its own name, once for its metadata and once for its bytes (huggingface_hub's
    # own ``/api/...`` calls aside)
    assert [r for r in fake_hub.seen if not r[1].startswith("/api/")] == [("HEAD", wanted), ("GET", wanted)]
    snap = cache / ("models--" + repo_id.replace("/", "--")) / "snapshots" / commit / cfg.filename
    assert snap.read_bytes() == pub.data

    # offline, with the endpoint gone, the same tag loads from the cache just populated without a connection
    fake_hub.stop()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    connects = []
    real_connect = socket.socket.connect

    def recording_connect(self, address):
        connects.append(address)
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", recording_connect)
    pub.check(zoo.create(tag, pretrained=True, **pub.kwargs))
    assert connects == []


# ---- (b) URL tags from the zoo cache, offline ----------------------------------------------------------------------

@pytest.mark.parametrize("tag", URL_TAGS)
def test_url_tag_loads_offline_from_the_zoo_cache(tag, monkeypatch):
    pub = published(tag)
    (hub.cache_dir("weights") / PurePosixPath(_cfg(tag).url).name).write_bytes(pub.data)
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    pub.check(zoo.create(tag, pretrained=True, **pub.kwargs))


# ---- (b) URL tags through a loopback HTTP server ------------------------------------------------------------------

class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def serve(tmp_path):
    """``serve(name, data)`` -> a 127.0.0.1 URL for ``data`` under ``name``."""
    root = tmp_path / "served"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()

    def add(name: str, data: bytes) -> str:
        (root / name).write_bytes(data)
        return f"http://127.0.0.1:{server.server_address[1]}/{name}"

    try:
        yield add
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.parametrize("tag", URL_TAGS)
def test_url_tag_downloads_through_loopback(tag, serve, monkeypatch):
    cfg = _cfg(tag)
    pub = published(tag)
    name = PurePosixPath(cfg.url).name
    prefix = hub._hash_prefix(name)
    monkeypatch.delenv("ZOO_OFFLINE", raising=False)
    if prefix is not None:
        # the release's name carries the first hex digits of its sha256 (torch.hub's convention): a file that is
        # not the release is refused under that name ...
        monkeypatch.setattr(cfg, "url", serve(name, pub.data))
        with pytest.raises(ChecksumError, match=prefix):
            zoo.create(tag, pretrained=True, **pub.kwargs)
        assert not list(hub.cache_dir("weights").iterdir())
        # ... and accepted under the same name with its own digest's prefix
        name = name.replace(prefix, hashlib.sha256(pub.data).hexdigest()[: len(prefix)])
    monkeypatch.setattr(cfg, "url", serve(name, pub.data))
    pub.check(zoo.create(tag, pretrained=True, **pub.kwargs))
    assert (hub.cache_dir("weights") / name).read_bytes() == pub.data
