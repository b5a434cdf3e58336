"""Bad input for the weights hub and the model registry: sources (URL, ``hf-hub:``, ``local-dir:``, file path),
checkpoints (truncated, corrupt, unsafe pickles, wrong entries), the cache, interrupted downloads, and the arguments
of ``zoo.create`` for every registered model (``zoo.list_models()``: a new model is covered once registered).

Downloads go to a loopback HTTP server only; the per-model cases fail before any model is built (the one lookup of
a model's keyword names builds it on the meta device).
"""
from __future__ import annotations

import functools
import hashlib
import http.server
import inspect
import io
import os
import re
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as st_save

import zoo
from zoo import hub, registry
from zoo.errors import (CheckpointError, ChecksumError, ConfigError, DownloadError, UnknownModelError,
                        WeightsError)

from .matrix import Case, check_case, params

MODELS = zoo.list_models()


# ---- files --------------------------------------------------------------------------------------------------------

def _sd(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"blocks.0.w": torch.randn(64, 32, generator=g), "blocks.0.b": torch.randn(64, generator=g)}


def _zip_bytes(obj=None) -> bytes:
    buf = io.BytesIO()
    torch.save({"model": _sd()} if obj is None else obj, buf)
    return buf.getvalue()


def _legacy_bytes() -> bytes:
    buf = io.BytesIO()
    torch.save(_sd(), buf, _use_new_zipfile_serialization=False)
    return buf.getvalue()


def _st_bytes() -> bytes:
    return st_save(_sd())


def _write(tmp: Path, name: str, data: bytes) -> Path:
    p = tmp / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


class Evil:  # module level, so that torch.save pickles it by reference
    pass


def _weights(tmp: Path) -> Path:
    return Path(os.environ["ZOO_HOME"]) / "weights"


# ---- a loopback server (one per case that needs it) ----------------------------------------------------------------

class _Server:
    def __init__(self):
        self.files, self.cut, self.no_length, self.requests = {}, {}, set(), []

    def __enter__(self):
        state = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args):
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                state.requests.append(rng)
                data = state.files.get(self.path)
                if data is None:
                    self.send_error(404, "Not Found")
                    return
                start, status = 0, 200
                m = re.fullmatch(r"bytes=(\d+)-", rng or "")
                if m and int(m.group(1)) < len(data):
                    start, status = int(m.group(1)), 206
                body = data[start:]
                self.send_response(status)
                if self.path not in state.no_length:
                    self.send_header("Content-Length", str(len(body)))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                cut = state.cut.get(self.path)
                self.wfile.write(body if cut is None or status == 206 else body[:cut])

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)

    def add(self, path: str, data: bytes) -> str:
        self.files[path] = data
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@pytest.fixture(autouse=True)
def _offline_by_default(monkeypatch):
    monkeypatch.delenv("ZOO_OFFLINE", raising=False)


def _download(data: bytes, name: str, cut=None, no_length=False, part: bytes = None, sha256=None):
    """Serve ``data`` as ``/name`` and download it (with a ``.part`` already there when ``part``)."""
    with _Server() as srv:
        url = srv.add("/" + name, data)
        if cut is not None:
            srv.cut["/" + name] = cut
        if no_length:
            srv.no_length.add("/" + name)
        if part is not None:
            _write(hub.cache_dir("weights"), name + ".part", part)
        try:
            return hub.download(url, sha256=sha256, progress=False), srv.requests
        except WeightsError as e:
            e.requests = srv.requests
            raise


def _nothing_cached(info, tmp):
    assert sorted(p.name for p in hub.cache_dir("weights").iterdir()) == []


def _only_part_kept(name):
    def check(info, tmp):
        assert sorted(p.name for p in hub.cache_dir("weights").iterdir()) == [name + ".part"]
    return check


def _gets(data: bytes, ranges=None):
    def check(result, tmp):
        path, requests = result
        assert path.read_bytes() == data
        assert sorted(p.name for p in path.parent.iterdir()) == [path.name]
        if ranges is not None:
            assert requests == ranges
    return check


# ---- sources and checkpoints ---------------------------------------------------------------------------------------

def _tmp_empty(tmp: Path):
    assert list(tmp.iterdir()) == []


def _missing():
    with _Server() as srv:
        srv.add("/there.pth", ZIP)
        return hub.download(srv.add("/there.pth", ZIP).replace("there", "missing"), progress=False)


def _unwritable_home(tmp: Path):
    (tmp / "afile").write_bytes(b"x")
    old = os.environ["ZOO_HOME"]
    os.environ["ZOO_HOME"] = str(tmp / "afile" / "home")
    try:
        return hub.download("http://127.0.0.1:9/w.pth", progress=False)
    finally:
        os.environ["ZOO_HOME"] = old


def _cut_then_resume(tmp: Path):
    data = _zip_bytes()
    with pytest.raises(DownloadError, match="cut short"):
        _download(data, "r.pth", cut=len(data) // 2)
    return _download(data, "r.pth")


def _interrupted_save(tmp: Path):
    out = hub.save_state_dict(_sd(1), tmp / "model.safetensors")
    before = out.read_bytes()

    def half(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half")
        raise KeyboardInterrupt

    import safetensors.torch as st
    real = st.save_file
    st.save_file = half
    try:
        with pytest.raises(KeyboardInterrupt):
            hub.save_state_dict(_sd(2), out)
    finally:
        st.save_file = real
    return out, before


def _kept_old(result, tmp):
    out, before = result
    assert out.read_bytes() == before and [p.name for p in tmp.iterdir()] == ["model.safetensors"]


def _load(name: str, data: bytes):
    return lambda tmp: hub.load_state_dict(_write(tmp, name, data))


def _create_from(name: str, obj, model: str = "detr_irpe_tiny"):
    def run(tmp):
        p = tmp / name
        torch.save(obj, p)
        return zoo.create(model, pretrained_file=str(p))
    return run


ST = _st_bytes()
ZIP = _zip_bytes()

SOURCE_CASES = [
    # wrong type
    Case("source-none", "wrong type", "a source that is not a path or string is refused, naming its type",
         lambda tmp: hub.resolve(None), raises=ConfigError, match="weights source.*NoneType"),
    Case("source-bytes", "wrong type", "a bytes path is refused as a source",
         lambda tmp: hub.resolve(b"/tmp/w.pth"), raises=ConfigError, match="bytes"),
    Case("sha256-int", "wrong type", "a sha256 that is not a string is refused, naming it",
         lambda tmp: hub.resolve(_write(tmp, "w.pth", b"x"), sha256=123), raises=ConfigError, match="sha256.*int"),
    Case("local-dir-filename-int", "wrong type", "a local-dir filename that is not a string is refused",
         lambda tmp: hub.resolve(f"local-dir:{tmp}", filename=3), raises=WeightsError, match="filename.*int"),
    Case("pretrained-file-int", "wrong type", "create(pretrained_file=) of the wrong type names the argument",
         lambda tmp: zoo.create("detr_irpe_tiny", pretrained_file=5), raises=ConfigError,
         match="pretrained_file.*detr_irpe_tiny"),
    Case("pretrained-str", "wrong type", "create(pretrained='no') is refused, not taken for True",
         lambda tmp: zoo.create("vit_irpe_tiny", pretrained="no"), raises=ConfigError, match="pretrained.*'no'"),
    Case("ckpt-list", "wrong type", "a checkpoint holding a list is refused, naming the file",
         lambda tmp: hub.load_state_dict(_write(tmp, "l.pth", _zip_bytes([torch.zeros(1)]))),
         raises=CheckpointError, match=r"l\.pth.*dict"),
    Case("ckpt-int-key", "wrong type", "a state dict key that is not a str is named with the file",
         _create_from("k.pth", {"model": {0: torch.zeros(1)}}), raises=CheckpointError, match=r"key 0.*k\.pth"),
    Case("ckpt-str-value", "wrong type", "a state dict value that is not a tensor is named with the file",
         _create_from("v.pth", {"backbone.x": "text"}), raises=CheckpointError, match=r"'backbone\.x'.*v\.pth"),
    Case("save-non-tensor", "wrong type", "save_state_dict refuses a non-tensor value, naming key and file",
         lambda tmp: hub.save_state_dict({"w": [1, 2]}, tmp / "o.safetensors"), raises=CheckpointError,
         match=r"'w'.*o\.safetensors", check=lambda info, tmp: _tmp_empty(tmp)),
    Case("load-checkpoint-none-value", "wrong type", "load_checkpoint names a None value and the source",
         lambda tmp: zoo.load_checkpoint(torch.nn.Linear(1, 1), {"weight": None}, source="mine.pth"),
         raises=CheckpointError, match=r"'weight'.*mine\.pth"),
    # out of range
    Case("sha256-not-hex", "out of range", "a sha256 that is no 64-hex digest is refused",
         lambda tmp: hub.resolve(_write(tmp, "w.pth", b"x"), sha256="xyz"), raises=ConfigError, match="xyz"),
    Case("http-404", "out of range", "a URL the server does not have raises DownloadError naming the URL and code",
         lambda tmp: _missing(), raises=DownloadError, match=r"missing\.pth.*404", check=_nothing_cached),
    Case("hf-hub-one-part", "out of range", "an hf-hub id without org/repo is refused",
         lambda tmp: hub.resolve("hf-hub:justone", filename="m.safetensors"), raises=WeightsError,
         match="hf-hub:justone"),
    Case("local-dir-missing-file", "out of range", "a local-dir file that is absent is named",
         lambda tmp: hub.resolve(f"local-dir:{tmp}", filename="nope.pth"), raises=WeightsError, match=r"nope\.pth"),
    # empty
    Case("create-empty-name", "empty", "an empty model name is unknown and the error lists models",
         lambda tmp: zoo.create(""), raises=UnknownModelError, match="unknown model ''"),
    Case("local-dir-no-filename", "empty", "local-dir: without filename= asks for it",
         lambda tmp: hub.resolve(f"local-dir:{tmp}"), raises=WeightsError, match="filename"),
    Case("hf-hub-no-file", "empty", "an hf-hub source naming no file asks for one",
         lambda tmp: hub.resolve("hf-hub:org/repo"), raises=WeightsError, match="names no file"),
    Case("empty-pth", "empty", "an empty .pth is no valid checkpoint, named",
         _load("e.pth", b""), raises=CheckpointError, match=r"e\.pth"),
    Case("empty-safetensors", "empty", "an empty .safetensors is no valid checkpoint, named",
         _load("e.safetensors", b""), raises=CheckpointError, match=r"e\.safetensors"),
    Case("empty-state-dict", "empty", "an empty state dict into a model lists the missing keys",
         _create_from("empty.pth", {}), raises=CheckpointError, match=r"empty\.pth.*missing keys"),
    Case("empty-download", "empty", "an empty body for a .safetensors URL is not cached",
         lambda tmp: _download(b"", "z.safetensors"), raises=DownloadError, match=r"z\.safetensors",
         check=_nothing_cached),
    # truncated
    Case("truncated-safetensors", "truncated", "a truncated safetensors file is named as invalid",
         _load("t.safetensors", ST[:-20]), raises=CheckpointError, match=r"t\.safetensors"),
    Case("truncated-zip", "truncated", "a truncated torch zip is named as invalid",
         _load("t.pth", ZIP[: len(ZIP) // 2]), raises=CheckpointError, match=r"t\.pth"),
    Case("truncated-legacy-pickle", "truncated", "a truncated legacy torch pickle is named as invalid",
         _load("t.pt", _legacy_bytes()[:-100]), raises=CheckpointError, match=r"t\.pt"),
    # corrupt
    Case("corrupt-safetensors-header", "corrupt", "a safetensors file whose header is no JSON is named",
         _load("c.safetensors", ST[:8] + b"{garbage" + ST[16:]), raises=CheckpointError, match=r"c\.safetensors"),
    Case("corrupt-random-bytes", "corrupt", "random bytes are no checkpoint, named",
         _load("c.pth", bytes(range(256)) * 8), raises=CheckpointError, match=r"c\.pth.*not a valid checkpoint"),
    Case("pickle-with-class", "corrupt", "a pickle holding a class instance is refused, naming the global",
         _load("g.pth", _zip_bytes({"model": _sd(), "x": Evil()})), raises=CheckpointError,
         match=r"g\.pth.*Evil"),
    Case("pickle-with-function", "corrupt", "a pickle holding a function is refused, naming the global",
         _load("f.pth", _zip_bytes({"fn": os.system})), raises=CheckpointError, match=r"f\.pth.*system"),
    Case("sha256-mismatch", "corrupt", "a download that fails its sha256 is discarded, naming the URL",
         lambda tmp: _download(ZIP, "s.pth", sha256="0" * 64), raises=ChecksumError, match=r"s\.pth.*0{64}",
         check=_nothing_cached),
    Case("hash-prefix-mismatch", "corrupt", "a download failing the sha256 prefix in its name is discarded",
         lambda tmp: _download(ZIP, "m-abcdef01.pth"), raises=ChecksumError, match=r"m-abcdef01\.pth.*abcdef01",
         check=_nothing_cached),
    Case("download-corrupt-safetensors", "corrupt", "a downloaded safetensors file with a broken header is refused",
         lambda tmp: _download(ST[:8] + b"{garbage" + ST[16:], "b.safetensors"), raises=DownloadError,
         match=r"b\.safetensors.*JSON", check=_nothing_cached),
    # adversarial path
    Case("local-dir-dotdot", "adversarial path", "a local-dir filename leaving the folder is refused, named",
         lambda tmp: hub.resolve(f"local-dir:{_write(tmp, 'd/x', b'').parent}", filename="../../x.pth"),
         raises=WeightsError, match=r"'\.\./\.\./x\.pth'"),
    Case("local-dir-absolute", "adversarial path", "an absolute local-dir filename is refused",
         lambda tmp: hub.resolve(f"local-dir:{tmp}", filename=str(_write(tmp, "abs.pth", b"x"))),
         raises=WeightsError, match=r"abs\.pth"),
    Case("download-filename-dotdot", "adversarial path", "a cache filename leaving the cache is refused",
         lambda tmp: hub.download("http://127.0.0.1:9/w.pth", filename="../w.pth"), raises=WeightsError,
         match=r"'\.\./w\.pth'"),
    Case("url-encoded-dotdot", "adversarial path", "a URL whose last segment decodes to ../ is refused",
         lambda tmp: hub.download("http://127.0.0.1:9/a/..%2F..%2Fevil.pth"), raises=WeightsError,
         match=r"\.\./\.\./evil\.pth"),
    Case("url-no-name", "adversarial path", "a URL with an empty path gives no file name: filename= is asked for",
         lambda tmp: hub.download("http://127.0.0.1:9/"), raises=WeightsError, match="filename="),
    Case("hf-hub-dotdot", "adversarial path", "an hf-hub file leaving the repository is refused",
         lambda tmp: hub.resolve("hf-hub:org/repo", filename="../../x.safetensors"), raises=WeightsError,
         match=r"\.\./\.\./x\.safetensors"),
    Case("source-is-directory", "adversarial path", "a directory given as weights file is named",
         lambda tmp: hub.resolve(str(tmp)), raises=WeightsError, match="is a directory"),
    Case("zoo-home-unwritable", "adversarial path", "a ZOO_HOME below a file: the cache error names ZOO_HOME",
         _unwritable_home, raises=WeightsError, match=r"afile.*ZOO_HOME"),
    # interrupted
    Case("cut-with-length", "interrupted", "a body cut short keeps the .part and names what arrived",
         lambda tmp: _download(ZIP, "c.pth", cut=len(ZIP) // 2), raises=DownloadError,
         match=rf"c\.pth.*{len(ZIP) // 2} of {len(ZIP)}", check=_only_part_kept("c.pth")),
    Case("cut-then-resume", "interrupted", "the next call resumes with Range and verifies the zip's CRCs",
         _cut_then_resume, check=_gets(ZIP, [f"bytes={len(ZIP) // 2}-"])),
    Case("cut-without-length", "interrupted", "a body cut off with no Content-Length is not cached as complete",
         lambda tmp: _download(ZIP, "n.pth", cut=len(ZIP) // 2, no_length=True), raises=DownloadError,
         match=r"n\.pth.*not a complete checkpoint", check=_nothing_cached),
    Case("cut-without-length-safetensors", "interrupted", "the same for safetensors: its header exposes the cut",
         lambda tmp: _download(ST, "n.safetensors", cut=len(ST) // 2, no_length=True), raises=DownloadError,
         match=r"n\.safetensors.*accounts for", check=_nothing_cached),
    Case("garbage-part", "interrupted", "a garbage .part is not resumed (no hash, not a zip): downloaded afresh",
         lambda tmp: _download(ST, "p.safetensors", part=b"garbage" * 100), check=_gets(ST, [None])),
    Case("stale-zip-part", "interrupted", "a .part from another file fails the CRCs: discarded, downloaded once more",
         lambda tmp: _download(ZIP, "s.pth", part=_zip_bytes({"model": _sd(7)})[: len(ZIP) // 2]),
         check=_gets(ZIP, [f"bytes={len(ZIP) // 2}-", None])),
    Case("save-interrupted", "interrupted", "an interrupted save_state_dict keeps the old file and leaves no temp",
         _interrupted_save, check=_kept_old),
]


# ---- zoo.create for every registered model -------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _int_kwarg(name: str) -> str:
    """An integer geometry argument the model's class takes (read from its signature, built on meta)."""
    cls = type(registry._build_meta(registry._entry(name)))
    accepted = inspect.signature(cls.__init__).parameters
    for k in registry._INT_KWARGS:
        if k in accepted and k != "num_classes":
            return k
    return "num_classes"


INT_NAMES = "|".join(registry._INT_KWARGS)


def _model_cases(name: str):
    return [
        Case(f"{name}-name-bytes", "wrong type", "a bytes model name is refused, naming its type",
             lambda tmp: zoo.create(name.encode()), raises=ConfigError, match="model name.*bytes"),
        Case(f"{name}-int-kwarg-str", "wrong type", "an integer geometry argument given as a str is refused",
             lambda tmp: zoo.create(name, **{_int_kwarg(name): "2"}), raises=ConfigError,
             match=rf"({INT_NAMES}) must be .*{name}.*'2'"),
        Case(f"{name}-int-kwarg-float", "wrong type", "an integer geometry argument given as a float is refused",
             lambda tmp: zoo.create(name, **{_int_kwarg(name): 2.5}), raises=ConfigError,
             match=rf"({INT_NAMES}) must be .*{name}.*2\.5"),
        Case(f"{name}-int-kwarg-zero", "out of range", "a geometry argument below its least value is refused",
             lambda tmp: zoo.create(name, **{_int_kwarg(name): -1}), raises=ConfigError,
             match=rf"({INT_NAMES}) must be .*{name}.*-1"),
        Case(f"{name}-unknown-tag", "out of range", "an unknown pretrained tag lists the model's tags",
             lambda tmp: zoo.create(f"{name}.no_such_tag"), raises=UnknownModelError,
             match=rf"no_such_tag.*{name}.*available"),
        Case(f"{name}-unknown-kwarg", "out of range", "an unknown keyword is named with the accepted ones",
             lambda tmp: zoo.create(name, no_such_arg=1), raises=ConfigError,
             match=rf"'no_such_arg' for {name}.*accepts:"),
    ]


MODEL_CASES = [c for name in MODELS for c in _model_cases(name)]
CASES = SOURCE_CASES + MODEL_CASES


@pytest.mark.parametrize("case", params(CASES))
def test_case(case, tmp_path):
    check_case(case, tmp_path)
