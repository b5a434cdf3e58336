"""Tests for zoo.hub: downloads from a loopback HTTP server, caching, offline mode, safe loading."""
from __future__ import annotations

import argparse
import hashlib
import http.server
import os
import re
import socket
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from zoo import hub
from zoo.errors import (
    CheckpointError,
    ChecksumError,
    ConfigError,
    DatasetNotFoundError,
    DownloadError,
    OfflineError,
    UnknownModelError,
    WeightsError,
    ZooError,
)


# --------------------------------------------------------------------------- fixtures


class _Server:
    """State shared with the request handler."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.truncate: dict[str, int] = {}  # path -> bytes to send before dropping the connection
        self.ignore_range = False
        self.no_length: set[str] = set()  # paths answered without Content-Length (the closed connection ends them)
        self.range_total: dict[str, str] = {}  # path -> the total a 206 claims in Content-Range (a wrong one)
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.url = ""

    def add(self, path: str, data: bytes) -> str:
        self.files[path] = data
        return self.url + path

    def count(self, path: str | None = None) -> int:
        return sum(1 for r in self.requests if path is None or r["path"] == path)


def _make_handler(state: _Server):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # one request per connection; closing ends the body

        def log_message(self, *args):  # keep test output quiet
            pass

        def do_GET(self):
            rng = self.headers.get("Range")
            with state.lock:
                state.requests.append({"path": self.path, "range": rng})
            data = state.files.get(self.path)
            if data is None:
                self.send_error(404, "Not Found")
                return
            start, status = 0, 200
            if rng and not state.ignore_range:
                m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
                assert m, rng
                start = int(m.group(1))
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                end = int(m.group(2)) if m.group(2) else len(data) - 1
                data = data[start : end + 1]
                status = 206
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            if self.path not in state.no_length:
                self.send_header("Content-Length", str(len(data)))
            if status == 206:
                total = state.range_total.get(self.path, str(len(state.files[self.path])))
                self.send_header("Content-Range", f"bytes {start}-{start + len(data) - 1}/{total}")
            self.end_headers()
            cut = state.truncate.get(self.path)
            if cut is not None and status == 200:
                self.wfile.write(data[:cut])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(data)

    return Handler


@pytest.fixture
def server():
    state = _Server()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(state))
    httpd.daemon_threads = True
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        t.join(5)


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Every test: cache under tmp_path, online by default (tests/conftest.py keeps sockets on loopback)."""
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "zoo_home"))
    monkeypatch.delenv("ZOO_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _payload(n: int = 300_000, seed: int = 0) -> bytes:
    g = torch.Generator().manual_seed(seed)
    return bytes(torch.randint(0, 256, (n,), generator=g, dtype=torch.uint8).tolist())


def _weights_dir(tmp_path: Path) -> Path:
    return tmp_path / "zoo_home" / "weights"


class CustomThing:  # module level so torch.save can pickle it by reference
    def __init__(self, x=1):
        self.x = x


def _a_function():
    return 1


# --------------------------------------------------------------------------- errors


def test_error_hierarchy_and_unknown_model_message():
    assert issubclass(ChecksumError, WeightsError) and issubclass(WeightsError, RuntimeError)
    for cls in (OfflineError, DownloadError, CheckpointError):
        assert issubclass(cls, WeightsError) and issubclass(cls, ZooError)
    assert issubclass(DatasetNotFoundError, FileNotFoundError)
    assert issubclass(ConfigError, ValueError)
    err = UnknownModelError("unknown model 'vit_foo'; did you mean: vit_small?")
    assert isinstance(err, KeyError)
    assert str(err) == "unknown model 'vit_foo'; did you mean: vit_small?"  # not repr-quoted
    with pytest.raises(KeyError):
        raise err


# --------------------------------------------------------------------------- cache dir / env


def test_cache_dir_uses_zoo_home_and_creates_it(tmp_path):
    d = hub.cache_dir()
    assert d == tmp_path / "zoo_home" / "weights" and d.is_dir()
    assert hub.cache_dir("data") == tmp_path / "zoo_home" / "data"


def test_cache_dir_default_is_platformdirs(tmp_path, monkeypatch):
    monkeypatch.delenv("ZOO_HOME")
    seen = []

    def fake_user_cache_dir(appname, *a, **k):
        seen.append(appname)
        return str(tmp_path / "pd_cache")

    monkeypatch.setattr(hub.platformdirs, "user_cache_dir", fake_user_cache_dir)
    assert hub.cache_dir() == tmp_path / "pd_cache" / "weights"
    assert seen == ["zoo"]


def test_unwritable_cache_dir_raises_weights_error(tmp_path, monkeypatch, server):
    blocker = tmp_path / "file"
    blocker.write_bytes(b"not a directory")
    bad = blocker / "sub"
    monkeypatch.setenv("ZOO_HOME", str(bad))
    with pytest.raises(WeightsError) as ei:
        hub.cache_dir()
    assert str(bad) in str(ei.value) and "ZOO_HOME" in str(ei.value)
    url = server.add("/w.bin", b"abc")
    with pytest.raises(WeightsError, match="ZOO_HOME"):
        hub.download(url, progress=False)
    assert server.count() == 0


@pytest.mark.parametrize(
    "env,hf,expected",
    [
        ({}, False, False),
        ({"ZOO_OFFLINE": "1"}, False, True),
        ({"ZOO_OFFLINE": "TRUE"}, False, True),
        ({"ZOO_OFFLINE": "yes"}, False, True),
        ({"ZOO_OFFLINE": "0"}, False, False),
        ({"HF_HUB_OFFLINE": "1"}, False, False),
        ({"HF_HUB_OFFLINE": "1"}, True, True),
    ],
)
def test_is_offline(monkeypatch, env, hf, expected):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert hub.is_offline(hf=hf) is expected


def test_sha256_file_matches_hashlib(tmp_path):
    data = _payload(3 * 1024 * 1024 + 7)  # spans several chunks
    p = tmp_path / "x.bin"
    p.write_bytes(data)
    assert hub.sha256_file(p) == _sha(data)
    assert hub.sha256_file(p, chunk_size=1000) == _sha(data)


# --------------------------------------------------------------------------- download


def test_download_verifies_then_serves_from_cache(server, tmp_path):
    data = _payload()
    url = server.add("/models/w.safetensors", data)
    p = hub.download(url, sha256=_sha(data), progress=False)
    assert p == _weights_dir(tmp_path) / "w.safetensors"
    assert p.read_bytes() == data
    assert server.count() == 1
    assert not p.with_name(p.name + ".part").exists()
    again = hub.download(url, sha256=_sha(data).upper(), progress=False)
    assert again == p and server.count() == 1  # no network for a verified cached copy


def test_download_filename_and_cache_arguments(server, tmp_path):
    url = server.add("/a/b/c", b"payload")
    p = hub.download(url, filename="named.bin", cache=tmp_path / "elsewhere", progress=False)
    assert p == tmp_path / "elsewhere" / "named.bin" and p.read_bytes() == b"payload"
    with pytest.raises(WeightsError):
        hub.download(url, filename="../escape.bin", progress=False)


def test_download_hash_mismatch(server, tmp_path):
    data = _payload()
    url = server.add("/w.bin", data)
    wrong = _sha(b"something else")
    with pytest.raises(ChecksumError) as ei:
        hub.download(url, sha256=wrong, progress=False)
    msg = str(ei.value)
    assert url in msg and wrong in msg and _sha(data) in msg
    d = _weights_dir(tmp_path)
    assert not (d / "w.bin").exists()
    assert list(d.iterdir()) == []  # the bad .part is gone too


def test_truncated_transfer_keeps_part_then_resumes(server, tmp_path):
    data = _payload(200_000)
    half = len(data) // 2
    url = server.add("/big.pt", data)
    server.truncate["/big.pt"] = half
    with pytest.raises(DownloadError) as ei:
        hub.download(url, sha256=_sha(data), progress=False)
    assert f"{half} of {len(data)}" in str(ei.value)
    target = _weights_dir(tmp_path) / "big.pt"
    part = target.with_name("big.pt.part")
    assert not target.exists()
    assert part.read_bytes() == data[:half]

    del server.truncate["/big.pt"]
    p = hub.download(url, sha256=_sha(data), progress=False)
    assert server.requests[-1]["range"] == f"bytes={half}-"
    assert server.count() == 2
    assert p == target and p.read_bytes() == data
    assert not part.exists()


def test_resume_when_server_ignores_range_restarts(server, tmp_path):
    data = _payload(100_000, seed=1)
    url = server.add("/r.bin", data)
    d = _weights_dir(tmp_path)
    d.mkdir(parents=True)
    (d / "r.bin.part").write_bytes(b"garbage that is not a prefix")
    server.ignore_range = True
    p = hub.download(url, sha256=_sha(data), progress=False)
    assert server.requests[-1]["range"] == "bytes=28-"
    assert p.read_bytes() == data  # 200 answer -> rewritten from scratch, not appended


def test_resume_with_oversized_part_gets_416_and_restarts(server, tmp_path):
    data = b"0123456789"
    url = server.add("/s.bin", data)
    d = _weights_dir(tmp_path)
    d.mkdir(parents=True)
    (d / "s.bin.part").write_bytes(b"x" * 50)
    p = hub.download(url, sha256=_sha(data), progress=False)
    assert [r["range"] for r in server.requests] == ["bytes=50-", None]
    assert p.read_bytes() == data


def test_http_404_raises_download_error(server, tmp_path):
    url = server.url + "/missing.bin"
    with pytest.raises(DownloadError) as ei:
        hub.download(url, progress=False)
    assert "404" in str(ei.value) and url in str(ei.value)
    assert not (_weights_dir(tmp_path) / "missing.bin").exists()


def test_connection_refused_raises_download_error():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(DownloadError, match=f"127.0.0.1:{port}"):
        hub.download(f"http://127.0.0.1:{port}/w.bin", progress=False)


def test_offline_with_cached_copy_needs_no_network(server, tmp_path, monkeypatch):
    data = b"cached weights"
    url = server.add("/w.bin", data)
    d = _weights_dir(tmp_path)
    d.mkdir(parents=True)
    (d / "w.bin").write_bytes(data)
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    assert hub.download(url, sha256=_sha(data), progress=False).read_bytes() == data
    assert hub.download(url, progress=False) == d / "w.bin"
    assert server.count() == 0


def test_offline_without_cached_copy_raises(server, tmp_path, monkeypatch):
    url = server.add("/w.bin", b"abc")
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    with pytest.raises(OfflineError) as ei:
        hub.download(url, progress=False)
    msg = str(ei.value)
    assert str(_weights_dir(tmp_path) / "w.bin") in msg and url in msg and "ZOO_OFFLINE" in msg
    assert server.count() == 0


def test_cached_copy_with_wrong_hash(server, tmp_path, monkeypatch):
    data = b"the real weights"
    url = server.add("/w.bin", data)
    d = _weights_dir(tmp_path)
    d.mkdir(parents=True)
    (d / "w.bin").write_bytes(b"stale")
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    with pytest.raises(ChecksumError):
        hub.download(url, sha256=_sha(data), progress=False)
    assert server.count() == 0 and (d / "w.bin").read_bytes() == b"stale"
    monkeypatch.delenv("ZOO_OFFLINE")
    assert hub.download(url, sha256=_sha(data), progress=False).read_bytes() == data
    assert server.count() == 1


# --------------------------------------------------------------------------- resolve


def test_resolve_local_dir_and_paths(tmp_path):
    d = tmp_path / "ckpts"
    d.mkdir()
    (d / "m.pth").write_bytes(b"abc")
    assert hub.resolve(f"local-dir:{d}", filename="m.pth") == d / "m.pth"
    assert hub.resolve(str(d / "m.pth"), sha256=_sha(b"abc")) == d / "m.pth"
    assert hub.resolve(d / "m.pth") == d / "m.pth"  # os.PathLike
    assert hub.resolve((d / "m.pth").as_uri()) == d / "m.pth"
    with pytest.raises(WeightsError, match="nope.pth"):
        hub.resolve(f"local-dir:{d}", filename="nope.pth")
    with pytest.raises(WeightsError, match="filename"):
        hub.resolve(f"local-dir:{d}")
    with pytest.raises(WeightsError, match=re.escape(str(tmp_path / "absent.pt"))):
        hub.resolve(str(tmp_path / "absent.pt"))
    with pytest.raises(WeightsError, match="directory"):
        hub.resolve(str(d))
    with pytest.raises(ChecksumError):
        hub.resolve(str(d / "m.pth"), sha256=_sha(b"other"))
    with pytest.raises(ConfigError):
        hub.resolve(str(d / "m.pth"), sha256="not-a-digest")


def test_resolve_url_goes_through_download(server, tmp_path):
    url = server.add("/x/y.bin", b"xyz")
    assert hub.resolve(url, sha256=_sha(b"xyz"), progress=False).read_bytes() == b"xyz"
    assert server.count() == 1


def test_resolve_hf_hub_parsing(monkeypatch, tmp_path):
    import huggingface_hub

    calls = []

    def fake(repo_id, filename, revision=None, local_files_only=False, **kw):
        calls.append((repo_id, filename, revision, local_files_only))
        p = tmp_path / "hf" / filename
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"hf")
        return str(p)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    assert hub.resolve("hf-hub:org/repo", filename="model.safetensors").read_bytes() == b"hf"
    hub.resolve("hf-hub:org/repo@v1.0/sub/dir/w.bin")
    hub.resolve("hf-hub:org/repo@abc123/sub", filename="w.bin")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.resolve("hf-hub:org/repo", filename="a.pt")
    assert calls == [
        ("org/repo", "model.safetensors", None, False),
        ("org/repo", "sub/dir/w.bin", "v1.0", False),
        ("org/repo", "sub/w.bin", "abc123", False),
        ("org/repo", "a.pt", None, True),
    ]
    with pytest.raises(WeightsError):
        hub.resolve("hf-hub:org/repo")  # no file named
    with pytest.raises(WeightsError):
        hub.resolve("hf-hub:justone", filename="x")
    with pytest.raises(ChecksumError):
        hub.resolve("hf-hub:org/repo", filename="b.pt", sha256=_sha(b"not hf"))


def test_resolve_hf_hub_offline_real_cache(monkeypatch, tmp_path):
    """Real huggingface_hub with local_files_only: a populated cache resolves, a missing file -> OfflineError."""
    from huggingface_hub import constants

    cache = tmp_path / "hf_cache"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--zoo-test--tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit / "sub"
    snap.mkdir(parents=True)
    (snap / "w.safetensors").write_bytes(b"cached hf weights")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("ZOO_OFFLINE", "1")

    p = hub.resolve("hf-hub:zoo-test/tiny/sub/w.safetensors", sha256=_sha(b"cached hf weights"))
    assert p.read_bytes() == b"cached hf weights"
    with pytest.raises(OfflineError, match="zoo-test/tiny"):
        hub.resolve("hf-hub:zoo-test/tiny", filename="missing.bin")


# --------------------------------------------------------------------------- load / save


def _sd(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(4, 3, generator=g), "b": torch.randn(4, generator=g), "n": torch.tensor(7)}


def _assert_sd_equal(a: dict, b: dict):
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_load_safetensors_by_suffix_and_by_magic(tmp_path):
    sd = _sd()
    save_file(sd, str(tmp_path / "m.safetensors"))
    _assert_sd_equal(hub.load_state_dict(tmp_path / "m.safetensors"), sd)
    save_file(sd, str(tmp_path / "m.bin"))  # safetensors content under a .bin name
    _assert_sd_equal(hub.load_state_dict(str(tmp_path / "m.bin")), sd)


def test_load_torch_saved_dict(tmp_path):
    sd = _sd(1)
    torch.save(sd, tmp_path / "m.pth")
    _assert_sd_equal(hub.load_state_dict(tmp_path / "m.pth"), sd)


def test_load_official_style_checkpoint_with_namespace_args(tmp_path):
    sd = _sd(2)
    ckpt = {"model": sd, "epoch": 299, "args": argparse.Namespace(model="deit_small", lr=5e-4)}
    torch.save(ckpt, tmp_path / "ckpt.pth")
    out = hub.load_state_dict(tmp_path / "ckpt.pth")
    assert set(out) == {"model", "epoch", "args"}  # returned as-is, not unwrapped
    _assert_sd_equal(out["model"], sd)
    assert out["epoch"] == 299 and out["args"].model == "deit_small"


def test_load_via_url_with_sha(server, tmp_path):
    sd = _sd(3)
    src = tmp_path / "src.safetensors"
    save_file(sd, str(src))
    data = src.read_bytes()
    url = server.add("/ck/src.safetensors", data)
    _assert_sd_equal(hub.load_state_dict(url, sha256=_sha(data)), sd)


def test_load_corrupt_file_raises_checkpoint_error(tmp_path):
    p = tmp_path / "corrupt.pth"
    p.write_bytes(_payload(5000, seed=5))
    with pytest.raises(CheckpointError) as ei:
        hub.load_state_dict(p)
    assert str(p) in str(ei.value) and "not a valid checkpoint" in str(ei.value)


def test_load_truncated_checkpoints_raise_checkpoint_error(tmp_path):
    torch.save(_sd(), tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.pth"):
        hub.load_state_dict(tmp_path / "cut.pth")
    save_file(_sd(), str(tmp_path / "full.safetensors"))
    data = (tmp_path / "full.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 10])
    with pytest.raises(CheckpointError, match="cut.safetensors"):
        hub.load_state_dict(tmp_path / "cut.safetensors")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.pth"):
        hub.load_state_dict(tmp_path / "empty.pth")


@pytest.mark.parametrize("obj,name", [(CustomThing(3), "CustomThing"), (_a_function, "_a_function")])
def test_load_pickle_with_arbitrary_objects_is_refused(tmp_path, obj, name):
    p = tmp_path / "evil.pth"
    torch.save({"model": _sd(), "extra": obj}, p)
    with pytest.raises(CheckpointError) as ei:
        hub.load_state_dict(p)
    msg = str(ei.value)
    assert str(p) in msg and "plain tensors" in msg and "safetensors" in msg
    assert name in msg  # the offending global is named


def test_load_non_mapping_is_refused(tmp_path):
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="dict"):
        hub.load_state_dict(tmp_path / "list.pt")


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_save_state_dict_roundtrip_leaves_no_tmp(tmp_path, suffix):
    sd = _sd(4)
    out = tmp_path / "out" / f"model{suffix}"
    assert hub.save_state_dict(sd, out) == out
    assert [p.name for p in out.parent.iterdir()] == [out.name]
    _assert_sd_equal(hub.load_state_dict(out), sd)
    sd2 = _sd(5)
    hub.save_state_dict(sd2, out)  # overwrite in place
    assert [p.name for p in out.parent.iterdir()] == [out.name]
    _assert_sd_equal(hub.load_state_dict(out), sd2)


def test_save_state_dict_failure_keeps_old_file_and_no_tmp(tmp_path):
    out = tmp_path / "model.safetensors"
    hub.save_state_dict(_sd(6), out)
    before = out.read_bytes()
    with pytest.raises(Exception):
        hub.save_state_dict({"w": torch.zeros(2), "meta": "not a tensor"}, out)
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]

    def failing_save(obj, fh):
        fh.write(b"half a file")
        raise RuntimeError("boom")

    pt = tmp_path / "model.pt"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(hub.torch, "save", failing_save)
        with pytest.raises(RuntimeError, match="boom"):
            hub.save_state_dict({"x": torch.zeros(2)}, pt)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_save_safetensors_with_tied_weights(tmp_path):
    w = torch.randn(5, 2)
    sd = {"embed.weight": w, "head.weight": w, "view": w[1:3]}
    out = hub.save_state_dict(sd, tmp_path / "tied.safetensors")
    loaded = hub.load_state_dict(out)
    _assert_sd_equal(loaded, {k: v.clone() for k, v in sd.items()})


# --------------------------------------------------------------------------- validating what arrives


def _ckpt_bytes(fmt: str, seed: int = 0, tmp: Path | None = None) -> bytes:
    """A real checkpoint file's bytes: a torch zip (``pth``) or a safetensors file, ~200 kB."""
    g = torch.Generator().manual_seed(seed)
    sd = {"blocks.0.w": torch.randn(200, 128, generator=g), "blocks.0.b": torch.randn(200, generator=g),
          "head.w": torch.randn(10, 200, generator=g)}
    import io

    if fmt == "pth":
        buf = io.BytesIO()
        torch.save({"model": sd}, buf)
        return buf.getvalue()
    from safetensors.torch import save

    return save(sd)


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_cut_off_body_without_content_length_is_not_cached(server, tmp_path, fmt):
    """No Content-Length: a closed connection looks like the end, so the file's own structure must vouch for it."""
    data = _ckpt_bytes(fmt)
    url = server.add(f"/nolen.{fmt}", data)
    server.no_length.add(f"/nolen.{fmt}")
    server.truncate[f"/nolen.{fmt}"] = len(data) * 2 // 3
    with pytest.raises(DownloadError, match=re.escape(url)):
        hub.download(url, progress=False)
    assert list(_weights_dir(tmp_path).iterdir()) == []  # neither the final name nor an unverifiable .part
    del server.truncate[f"/nolen.{fmt}"]
    p = hub.download(url, progress=False)  # the whole body without Content-Length is accepted
    assert p.read_bytes() == data and server.requests[-1]["range"] is None


def test_unrecognised_body_without_content_length_or_hash_is_refused(server, tmp_path):
    url = server.add("/blob.bin", _payload(5000))
    server.no_length.add("/blob.bin")
    with pytest.raises(DownloadError, match=re.escape(url) + ".*complete"):
        hub.download(url, progress=False)
    assert list(_weights_dir(tmp_path).iterdir()) == []
    data = _payload(5000)
    assert hub.download(url, sha256=_sha(data), progress=False).read_bytes() == data  # a hash vouches for it


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_garbage_part_is_never_spliced(server, tmp_path, fmt):
    """A stale ``.part`` that is no prefix of the file, no hash known, server honouring Range: the result is the
    served file, never the splice."""
    data = _ckpt_bytes(fmt)
    url = server.add(f"/g.{fmt}", data)
    d = _weights_dir(tmp_path)
    d.mkdir(parents=True)
    (d / f"g.{fmt}.part").write_bytes(_payload(len(data) // 2, seed=9))
    p = hub.download(url, progress=False)
    assert p.read_bytes() == data
    assert server.requests[-1]["range"] is None
    assert sorted(x.name for x in d.iterdir()) == [f"g.{fmt}"]


def test_stale_zip_part_is_resumed_then_discarded_and_downloaded_again(server, tmp_path):
    """The ``.part`` is a prefix of an older version of the file: the resumed splice fails the zip's CRC check, is
    discarded, and the file is downloaded once from scratch."""
    old, new = _ckpt_bytes("pth", seed=1), _ckpt_bytes("pth", seed=2)
    assert len(old) == len(new) and old != new
    url = server.add("/stale.pth", new)
    d = _weights_dir(tmp_path)
    d.mkdir(parents=True)
    (d / "stale.pth.part").write_bytes(old[: len(old) // 2])
    p = hub.download(url, progress=False)
    assert [r["range"] for r in server.requests] == [f"bytes={len(old) // 2}-", None]
    assert p.read_bytes() == new
    assert sorted(x.name for x in d.iterdir()) == ["stale.pth"]


def test_truncated_zip_without_hash_resumes_with_range(server, tmp_path):
    data = _ckpt_bytes("pth", seed=3)
    url = server.add("/r.pth", data)
    server.truncate["/r.pth"] = len(data) // 3
    with pytest.raises(DownloadError, match="cut short"):
        hub.download(url, progress=False)
    del server.truncate["/r.pth"]
    p = hub.download(url, progress=False)
    assert [r["range"] for r in server.requests] == [None, f"bytes={len(data) // 3}-"]
    assert p.read_bytes() == data


def test_resume_whose_content_range_total_disagrees_restarts(server, tmp_path):
    data = _ckpt_bytes("pth", seed=4)
    url = server.add("/t.pth", data)
    d = _weights_dir(tmp_path)
    d.mkdir(parents=True)
    (d / "t.pth.part").write_bytes(data[:1000])
    server.range_total["/t.pth"] = str(len(data) + 7)  # not the size the 206 body completes the file to
    p = hub.download(url, progress=False)
    assert [r["range"] for r in server.requests] == ["bytes=1000-", None]
    assert p.read_bytes() == data


def test_torch_hub_hash_prefix_in_the_file_name_is_verified(server, tmp_path):
    """``name-<first hex digits of the sha256>.pth`` (torch.hub's convention, the DeiT release URLs)."""
    data = _ckpt_bytes("pth", seed=5)
    good = _sha(data)[:8]
    wrong = "abcdef01" if good != "abcdef01" else "abcdef02"
    url = server.add(f"/deit_x-{good}.pth", data)
    assert hub.download(url, progress=False).read_bytes() == data
    bad_url = server.add(f"/deit_y-{wrong}.pth", data)
    with pytest.raises(ChecksumError, match=re.escape(bad_url)):
        hub.download(bad_url, progress=False)
    assert not (_weights_dir(tmp_path) / f"deit_y-{wrong}.pth").exists()
    assert not (_weights_dir(tmp_path) / f"deit_y-{wrong}.pth.part").exists()
    # a resumed file that fails the prefix check is downloaded once more from scratch
    d = _weights_dir(tmp_path)
    (d / f"deit_z-{good}.pth.part").write_bytes(b"PK\x03\x04" + b"\0" * 996)
    url = server.add(f"/deit_z-{good}.pth", data)
    n = server.count()
    assert hub.download(url, progress=False).read_bytes() == data
    assert [r["range"] for r in server.requests[n:]] == ["bytes=1000-", None]


def test_fresh_download_of_a_broken_checkpoint_names_the_url(server, tmp_path):
    data = _ckpt_bytes("safetensors", seed=6)
    broken = data[:8] + b"{not json" + data[17:]
    url = server.add("/broken.safetensors", broken)
    with pytest.raises(DownloadError, match=re.escape(url) + ".*safetensors"):
        hub.download(url, progress=False)
    assert list(_weights_dir(tmp_path).iterdir()) == []


# --------------------------------------------------------------------------- local-dir / state dict entries


@pytest.mark.parametrize("filename", ["../x.pth", "../../x.pth", "sub/../../x.pth"])
def test_local_dir_refuses_a_filename_outside_the_folder(tmp_path, filename):
    d = tmp_path / "a" / "b"
    d.mkdir(parents=True)
    (tmp_path / "x.pth").write_bytes(b"abc")
    (tmp_path / "a" / "x.pth").write_bytes(b"abc")
    with pytest.raises(WeightsError, match=re.escape(repr(filename))):
        hub.resolve(f"local-dir:{d}", filename=filename)
    with pytest.raises(WeightsError, match="x.pth"):
        hub.resolve(f"local-dir:{d}", filename=str(tmp_path / "x.pth"))  # an absolute path is outside too


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
@pytest.mark.parametrize("sd,key", [({"w": torch.zeros(2), 3: torch.zeros(2)}, "3"),
                                    ({"w": torch.zeros(2), "meta": "text"}, "'meta'"),
                                    ({"w": torch.zeros(2), "n": None}, "'n'")])
def test_save_state_dict_refuses_non_str_keys_and_non_tensor_values(tmp_path, suffix, sd, key):
    out = tmp_path / f"m{suffix}"
    with pytest.raises(CheckpointError, match=re.escape(key) + ".*" + re.escape(str(out))):
        hub.save_state_dict(sd, out)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_save_state_dict_gives_the_permissions_of_a_plainly_created_file(tmp_path, suffix):
    old = os.umask(0o022)
    try:
        plain = tmp_path / "plain"
        plain.write_bytes(b"x")
        out = hub.save_state_dict(_sd(), tmp_path / f"model{suffix}")
        assert (out.stat().st_mode & 0o777) == (plain.stat().st_mode & 0o777) == 0o644
    finally:
        os.umask(old)
