"""Model zoo downloads, cache, manifest and checkpoint reading; files are served from 127.0.0.1."""
import argparse
import hashlib
import http.server
import io
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from visionattn import hub


class _Handler(http.server.BaseHTTPRequestHandler):
    files = {}  # path -> bytes

    def do_GET(self):  # noqa: N802
        self.server.hits.append(self.path)
        if self.path.startswith("/truncated/"):
            body = self.files[self.path[len("/truncated"):]]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])  # announce all, send half, hang up
            self.wfile.flush()
            self.close_connection = True
            return
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404, "Not Found")
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.hits = []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _url(server, path):
    return f"http://127.0.0.1:{server.server_address[1]}{path}"


def _serve(path, obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    _Handler.files[path] = buf.getvalue()
    return hashlib.sha256(buf.getvalue()).hexdigest()


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("VISIONATTN_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("VISIONATTN_OFFLINE", raising=False)
    return tmp_path / "home" / "checkpoints"


def _leftovers(cache: Path):
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def test_cache_dir_respects_visionattn_home_then_torch_home(tmp_path, monkeypatch):
    assert hub.cache_dir() == tmp_path / "home" / "checkpoints"
    monkeypatch.delenv("VISIONATTN_HOME")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    assert hub.cache_dir() == tmp_path / "th" / "hub" / "checkpoints"


def test_download_verifies_and_reuses_the_cache(server, home):
    sha = _serve("/w/good.pth", {"w": torch.arange(4.0)})
    path = hub.download(_url(server, "/w/good.pth"), sha, progress=False)
    assert path == home / "good.pth" and hub.file_sha256(path) == sha
    hits = len(server.hits)
    assert hub.download(_url(server, "/w/good.pth"), sha, progress=False) == path
    assert len(server.hits) == hits  # cache hit: no request
    assert torch.equal(hub.read_checkpoint(_url(server, "/w/good.pth"))["w"], torch.arange(4.0))
    assert _leftovers(home) == ["good.pth"]


def test_hash_mismatch_keeps_nothing(server, home):
    _serve("/w/bad.pth", {"w": torch.zeros(2)})
    with pytest.raises(RuntimeError, match="SHA-256 mismatch"):
        hub.download(_url(server, "/w/bad.pth"), "0" * 64, progress=False)
    assert _leftovers(home) == []


def test_corrupt_cached_file_is_replaced_online_and_refused_offline(server, home):
    sha = _serve("/w/fix.pth", {"w": torch.ones(3)})
    home.mkdir(parents=True)
    (home / "fix.pth").write_bytes(b"garbage")
    with pytest.raises(RuntimeError, match="corrupt or a different file"):
        hub.download(_url(server, "/w/fix.pth"), sha, progress=False, offline=True)
    with pytest.warns(UserWarning, match="downloading it again"):
        path = hub.download(_url(server, "/w/fix.pth"), sha, progress=False)
    assert hub.file_sha256(path) == sha


def test_truncated_download_is_an_error_and_leaves_no_file(server, home):
    sha = _serve("/w/big.pth", {"w": torch.randn(1000)})
    with pytest.raises(RuntimeError, match="truncated"):
        hub.download(_url(server, "/truncated/w/big.pth"), sha, progress=False)
    with pytest.raises(RuntimeError, match="truncated"):  # also without a hash to catch it
        hub.download(_url(server, "/truncated/w/big.pth"), None, progress=False)
    assert _leftovers(home) == []


def test_http_error(server, home):
    with pytest.raises(RuntimeError, match="HTTP 404"):
        hub.download(_url(server, "/missing.pth"), None, progress=False)
    assert _leftovers(home) == []


def test_connection_refused(home):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RuntimeError, match="could not download .*no network"):
        hub.download(f"http://127.0.0.1:{port}/x.pth", None, progress=False, timeout=5)
    assert _leftovers(home) == []


def test_offline_mode_uses_only_the_cache(server, home, monkeypatch):
    sha = _serve("/w/off.pth", {"w": torch.ones(1)})
    monkeypatch.setenv("VISIONATTN_OFFLINE", "1")
    hits = len(server.hits)
    with pytest.raises(RuntimeError, match="offline mode.*not in the cache"):
        hub.download(_url(server, "/w/off.pth"), sha, progress=False)
    assert len(server.hits) == hits
    monkeypatch.delenv("VISIONATTN_OFFLINE")
    hub.download(_url(server, "/w/off.pth"), sha, progress=False)
    monkeypatch.setenv("VISIONATTN_OFFLINE", "1")
    assert hub.file_sha256(hub.download(_url(server, "/w/off.pth"), sha, progress=False)) == sha


def test_read_checkpoint_allows_safe_globals_only(tmp_path):
    good = tmp_path / "official.pth"
    torch.save({"model": {"w": torch.ones(1)}, "args": argparse.Namespace(lr=0.1),
                "best_acc": np.float64(83.1), "hist": np.zeros(3), "epoch": np.int64(3)}, good)
    ckpt = hub.read_checkpoint(good)
    assert ckpt["args"].lr == 0.1 and float(ckpt["best_acc"]) == 83.1

    bad = tmp_path / "unsafe.pth"
    torch.save({"w": torch.ones(1), "obj": Path("x")}, bad)  # a class outside the allowlist
    with pytest.raises(RuntimeError, match="not on visionattn's allowlist.*trusted=True"):
        hub.read_checkpoint(bad)
    assert "obj" in hub.read_checkpoint(bad, trusted=True)


def test_read_checkpoint_lightning_1x_callback_keys(tmp_path, monkeypatch):
    """Lightning 1.x pickles the ModelCheckpoint class as a dict key; it reads without Lightning."""
    import sys
    import types

    fake = types.ModuleType("pytorch_lightning.callbacks.model_checkpoint")
    ModelCheckpoint = type("ModelCheckpoint", (), {"__module__": fake.__name__})
    fake.ModelCheckpoint = ModelCheckpoint
    for name in ("pytorch_lightning", "pytorch_lightning.callbacks", fake.__name__):
        monkeypatch.setitem(sys.modules, name, fake if name == fake.__name__ else types.ModuleType(name))
    torch.save({"epoch": 3, "pytorch-lightning_version": "1.0.8", "state_dict": {"vqvae.w": torch.ones(2)},
                "callbacks": {ModelCheckpoint: {"best_model_score": torch.tensor(0.5), "best_model_path": "x.ckpt"}}},
               tmp_path / "last.ckpt")
    for name in ("pytorch_lightning", "pytorch_lightning.callbacks", fake.__name__):
        monkeypatch.delitem(sys.modules, name)
    ckpt = hub.read_checkpoint(tmp_path / "last.ckpt")
    (key, state), = ckpt["callbacks"].items()
    assert key is hub.LightningCallbackKey and state["best_model_path"] == "x.ckpt"
    assert torch.equal(ckpt["state_dict"]["vqvae.w"], torch.ones(2))


def test_read_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        hub.read_checkpoint(tmp_path / "nope.pth")
    torch.save({"w": torch.randn(100)}, tmp_path / "t.pth")
    data = (tmp_path / "t.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(RuntimeError, match="corrupt, truncated or not a PyTorch checkpoint"):
        hub.read_checkpoint(tmp_path / "cut.pth")


# --- manifest ---------------------------------------------------------------------------------

MANIFEST = """
family: tinyfam
models:
  - name: tinyfam_a.official
    architecture: resnet10t
    url: {url}
    sha256: {sha}
    source: official
    converter_kwargs: {{ema: true}}
    metrics:
      published: {{top1: 70.1}}
      reproduced: null
  - name: tinyfam_a.ours
    architecture: {{name: resnet10t, kwargs: {{num_classes: 10}}}}
    url: {url2}
    sha256: {sha2}
    source: ours
    default: true
    metrics:
      published: null
      reproduced: {{top1: 55.0}}
  - name: tinyfam_b.dead
    architecture: resnet14t
    url: null
    sha256: null
    source: official
    notes: the authors' Google Drive link is gone
    metrics: {{published: {{top1: 72.0}}}}
  - name: tinyfam_c.unhashed
    architecture: resnet14t
    url: {url3}
    sha256: null
    source: official
    metrics: {{published: null}}
"""


@pytest.fixture
def zoo(tmp_path, monkeypatch, server):
    import timm

    d = tmp_path / "zoo"
    d.mkdir()
    net = timm.create_model("resnet10t", num_classes=10)
    sha2 = _serve("/z/ours.pth", {"state_dict": net.state_dict()})
    d.joinpath("tinyfam.yaml").write_text(MANIFEST.format(
        url=_url(server, "/z/off.pth"), sha="a" * 64, url2=_url(server, "/z/ours.pth"), sha2=sha2,
        url3=_url(server, "/z/unhashed.pth")))
    monkeypatch.setenv("VISIONATTN_ZOO_DIR", str(d))
    hub.reload_manifest()
    yield d, net
    hub.reload_manifest()


def test_manifest_lookup(zoo):
    assert [e.name for e in hub.list_entries()] == ["tinyfam_a.official", "tinyfam_a.ours", "tinyfam_b.dead",
                                                    "tinyfam_c.unhashed"]
    e = hub.get_entry("tinyfam_a.official")
    assert (e.family, e.model, e.converter, e.converter_kwargs, e.published) == (
        "tinyfam", "resnet10t", "tinyfam", {"ema": True}, {"top1": 70.1})
    ours = hub.get_entry("resnet10t")  # architecture name -> its default entry
    assert ours.name == "tinyfam_a.ours" and ours.converter is None and ours.kwargs == {"num_classes": 10}
    assert ours.filename == "tinyfam_a.ours.pth"
    assert hub.has_entry("tinyfam_b.dead") and hub.has_entry("resnet14t") and not hub.has_entry("resnet18")
    with pytest.raises(ValueError, match="Did you mean: tinyfam_a.ours"):
        hub.get_entry("tinyfam_a.our")


def test_load_pretrained_and_create_model(zoo):
    import visionattn

    _, net = zoo
    model = visionattn.create_model("tinyfam_a.ours", pretrained=True)
    for k, v in net.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    assert visionattn.create_model("resnet10t", pretrained=True).fc.out_features == 10


def test_dead_link_entry_accepts_a_user_supplied_file(zoo):
    import timm

    e = hub.get_entry("tinyfam_b.dead")
    with pytest.raises(RuntimeError, match="no download link.*put it at .*tinyfam_b.dead.pth.*checkpoint=PATH"):
        hub.fetch_entry(e)
    net = timm.create_model("resnet14t")
    e.cache_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), e.cache_path)
    loaded = hub.load_pretrained(timm.create_model("resnet14t"), "tinyfam_b.dead")
    assert torch.equal(loaded.fc.weight, net.fc.weight)


def test_unhashed_entry_is_never_downloaded_but_a_user_supplied_file_loads(zoo, server):
    import timm

    net = timm.create_model("resnet14t")
    _serve("/z/unhashed.pth", net.state_dict())  # the link works, but nothing vouches for the file
    e = hub.get_entry("tinyfam_c.unhashed")
    hits = len(server.hits)
    with pytest.raises(RuntimeError, match="no SHA-256.*does not download.*put it at .*tinyfam_c.unhashed.pth"):
        hub.load_pretrained(timm.create_model("resnet14t"), e)
    assert len(server.hits) == hits and not e.cache_path.exists()
    e.cache_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), e.cache_path)  # the user's own copy
    loaded = hub.load_pretrained(timm.create_model("resnet14t"), e)
    assert torch.equal(loaded.fc.weight, net.fc.weight)


def test_bad_manifest_is_reported_with_its_file(tmp_path, monkeypatch):
    d = tmp_path / "badzoo"
    d.mkdir()
    d.joinpath("x.yaml").write_text("family: x\nmodels:\n  - name: a\n    architecture: m\n    url: null\n"
                                    "    sha256: xyz\n    source: official\n    metrics: {published: null}\n")
    monkeypatch.setenv("VISIONATTN_ZOO_DIR", str(d))
    hub.reload_manifest()
    try:
        with pytest.raises(ValueError, match=r"x.yaml: a: sha256 must be 64 hex digits"):
            hub.list_entries()
    finally:
        hub.reload_manifest()


def test_repository_manifests_parse():
    """Every model_zoo/*.yaml committed by the families follows the schema."""
    hub.reload_manifest()
    entries = hub.list_entries()
    assert len({e.name for e in entries}) == len(entries)


def test_unverified_entry_with_a_junk_file_says_so(zoo):
    e = hub.get_entry("tinyfam_b.dead")
    e.cache_path.parent.mkdir(parents=True, exist_ok=True)
    e.cache_path.write_text("<html>This link is no longer available</html>")
    import timm

    with pytest.raises(RuntimeError, match="no SHA-256, so this may be an error page.*delete"):
        hub.load_pretrained(timm.create_model("resnet14t"), "tinyfam_b.dead")
