"""Model zoo downloads, cache, manifest and checkpoint reading; files are served from 127.0.0.1."""
import argparse
import hashlib
import http.server
import io
import json
import socket
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from visionattn import hub


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``files`` (path -> bytes) plus misbehaving paths: /truncated/..., /html/..., /redirect/...,
    /stall/... (headers and half the body, then silence) and /hang (no answer at all)."""

    files = {}  # path -> bytes
    stall_s = 3.0

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
        if self.path.startswith("/stall/"):
            body = self.files[self.path[len("/stall"):]]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            time.sleep(self.stall_s)  # the client gives up first
            self.close_connection = True
            return
        if self.path == "/hang":
            time.sleep(self.stall_s)
            self.close_connection = True
            return
        if self.path.startswith("/redirect/"):
            self.send_response(302)
            self.send_header("Location", self.path[len("/redirect"):])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path.startswith("/html/"):  # what a dead share link answers: a web page, status 200
            body = b"<!DOCTYPE html><html><head><title>Sign in</title></head><body>moved</body></html>"
            ctype = "text/html; charset=utf-8" if self.path.endswith(".pth") else "application/octet-stream"
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404, "Not Found")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
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
    url = _url(server, "/w/good.pth")
    path = hub.download(url, sha, progress=False)
    assert path == home / hub.url_cache_name(url) and hub.file_sha256(path) == sha
    hits = len(server.hits)
    assert hub.download(url, sha, progress=False) == path
    assert len(server.hits) == hits  # cache hit: no request
    assert torch.equal(hub.read_checkpoint(url)["w"], torch.arange(4.0))
    assert _leftovers(home) == [path.name]


def test_cache_names_never_collide_on_the_url_tail():
    """The three BiFormer OneDrive URLs all end in 'content'."""
    urls = [f"https://api.onedrive.com/v1.0/shares/s!{x}/root/content" for x in ("AAA", "BBB", "CCC")]
    names = [hub.url_cache_name(u) for u in urls]
    assert len(set(names)) == 3 and all(n.startswith("content-") for n in names)
    assert hub.url_cache_name("http://h/a/r10.pth.tar").endswith(".pth.tar")


def test_hash_mismatch_keeps_nothing(server, home):
    _serve("/w/bad.pth", {"w": torch.zeros(2)})
    with pytest.raises(RuntimeError, match="SHA-256 mismatch"):
        hub.download(_url(server, "/w/bad.pth"), "0" * 64, progress=False)
    assert _leftovers(home) == []


def test_corrupt_cached_file_is_replaced_online_and_refused_offline(server, home):
    sha = _serve("/w/fix.pth", {"w": torch.ones(3)})
    home.mkdir(parents=True)
    (home / hub.url_cache_name(_url(server, "/w/fix.pth"))).write_bytes(b"garbage")
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


@pytest.mark.parametrize("path", ["/html/page.pth", "/html/page.bin"])
def test_an_html_page_is_not_a_checkpoint(server, home, path):
    """Dead share links answer 200 with a web page, labelled text/html or not."""
    with pytest.raises(RuntimeError, match="HTML page"):
        hub.download(_url(server, path), None, progress=False)
    assert _leftovers(home) == []


def test_redirect_is_followed(server, home):
    sha = _serve("/w/target.pth", {"w": torch.ones(2)})
    path = hub.download(_url(server, "/redirect/w/target.pth"), sha, progress=False)
    assert hub.file_sha256(path) == sha and "/redirect/w/target.pth" in server.hits and "/w/target.pth" in server.hits


@pytest.mark.parametrize("path", ["/stall/w/slow.pth", "/hang"])
def test_a_stalled_server_times_out(server, home, path):
    _serve("/w/slow.pth", {"w": torch.randn(1000)})
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match="stalled: no data from the server for 0.5 s"):
        hub.download(_url(server, path), None, progress=False, timeout=0.5)
    assert time.perf_counter() - start < _Handler.stall_s  # gave up before the server did
    assert _leftovers(home) == []


def test_download_timeout_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("VISIONATTN_DOWNLOAD_TIMEOUT", "7.5")
    assert hub.download_timeout() == 7.5
    monkeypatch.setenv("VISIONATTN_DOWNLOAD_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="number of seconds, got 'soon'"):
        hub.download_timeout()


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


def _resnet14t():
    import timm

    return timm.create_model("resnet14t")


def _pins(home):
    return json.loads((home / hub.LOCK_NAME).read_text())["pins"]


def test_dead_link_entry_accepts_a_user_supplied_file_and_pins_it(zoo, home):
    e = hub.get_entry("tinyfam_b.dead")
    with pytest.raises(RuntimeError, match="no download link.*put it at .*tinyfam_b.dead.pth.*checkpoint=PATH"):
        hub.fetch_entry(e)
    net = _resnet14t()
    e.cache_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), e.cache_path)
    with pytest.warns(hub.ZooPinWarning, match="tinyfam_b.dead.*pinned to SHA-256"):
        loaded = hub.load_pretrained(_resnet14t(), "tinyfam_b.dead")
    assert torch.equal(loaded.fc.weight, net.fc.weight)
    assert _pins(home)["file:tinyfam_b.dead.pth"]["sha256"] == hub.file_sha256(e.cache_path)
    torch.save(_resnet14t().state_dict(), e.cache_path)  # another file at the same place
    with pytest.raises(hub.ChecksumError, match="pinned to SHA-256"):
        hub.fetch_entry(e)


def test_unhashed_entry_is_downloaded_pinned_and_then_verified(zoo, server, home):
    """First download: pinned with one warning. Later loads: checked against the pin, no warning.
    A changed file on the server is refused with both hashes, and nothing is cached."""
    net = _resnet14t()
    first = _serve("/z/unhashed.pth", net.state_dict())
    e = hub.get_entry("tinyfam_c.unhashed")
    with pytest.warns(hub.ZooPinWarning, match=rf"pinned to SHA-256 {first}.*sha256: {first}.*"
                                               rf"visionattn-zoo pin tinyfam_c.unhashed --write") as caught:
        loaded = hub.load_pretrained(_resnet14t(), e)
    assert len(caught) == 1 and torch.equal(loaded.fc.weight, net.fc.weight)
    assert e.cache_path == home / "tinyfam_c.unhashed.pth" and hub.file_sha256(e.cache_path) == first
    pin = _pins(home)[e.url]
    assert pin["sha256"] == first and pin["entries"] == ["tinyfam_c.unhashed"]

    hits = len(server.hits)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once: the second load is silent
        hub.load_pretrained(_resnet14t(), e)
    assert len(server.hits) == hits  # from the cache, checked against the pin

    changed = _serve("/z/unhashed.pth", _resnet14t().state_dict())  # the link now serves another file
    e.cache_path.unlink()
    with pytest.raises(hub.ChecksumError, match=rf"SHA-256 {changed}.*pinned to SHA-256 {first}.*unpin"):
        hub.fetch_entry(e)
    assert not e.cache_path.exists()
    e.cache_path.write_bytes(_Handler.files["/z/unhashed.pth"])  # the changed file put there by hand
    with pytest.warns(UserWarning, match="downloading it again"), \
            pytest.raises(hub.ChecksumError, match=rf"{changed}.*pinned to SHA-256 {first}"):
        hub.fetch_entry(e)

    assert hub.unpin(e) and not hub.unpin(e)  # the publisher replaced it on purpose
    with pytest.warns(hub.ZooPinWarning, match=changed):
        hub.fetch_entry(e)
    assert _pins(home)[e.url]["sha256"] == changed


def test_zoo_entry_errors_say_where_to_put_the_file(zoo, server, home, monkeypatch):
    _Handler.files.pop("/z/unhashed.pth", None)
    e = hub.get_entry("tinyfam_c.unhashed")
    with pytest.raises(RuntimeError, match=r"HTTP 404.*put it at .*tinyfam_c.unhashed.pth"):
        hub.fetch_entry(e, progress=False)
    monkeypatch.setenv("VISIONATTN_OFFLINE", "1")
    with pytest.raises(RuntimeError, match=r"offline mode.*not in the cache.*visionattn-zoo download"):
        hub.fetch_entry(e, progress=False)
    assert _leftovers(home) == []


def test_offline_zoo_entry_with_a_cached_pinned_file(zoo, server, home, monkeypatch):
    _serve("/z/unhashed.pth", _resnet14t().state_dict())
    e = hub.get_entry("tinyfam_c.unhashed")
    with pytest.warns(hub.ZooPinWarning):
        hub.fetch_entry(e, progress=False)
    monkeypatch.setenv("VISIONATTN_OFFLINE", "1")
    hits = len(server.hits)
    assert hub.fetch_entry(e) == e.cache_path and len(server.hits) == hits
    e.cache_path.write_bytes(b"PK\x03\x04 damaged")
    with pytest.raises(hub.ChecksumError, match="the cached file .*tinyfam_c.unhashed.pth.* pinned to SHA-256"):
        hub.fetch_entry(e)


def test_an_html_page_is_never_pinned(zoo, server, home):
    e = hub.get_entry("tinyfam_b.dead")  # a user saved the share link's page instead of the file
    e.cache_path.parent.mkdir(parents=True, exist_ok=True)
    e.cache_path.write_text("<html>This link is no longer available</html>")
    with pytest.raises(RuntimeError, match="HTML page.*Delete it"):
        hub.load_pretrained(_resnet14t(), "tinyfam_b.dead")
    assert not (home / hub.LOCK_NAME).exists()


def test_pin_file_is_shared_by_entries_of_one_url(tmp_path, server, home, monkeypatch):
    net = _resnet14t()
    _serve("/z/shared.pth", {"state_dict": net.state_dict(), "state_dict_ema": net.state_dict()})
    d = tmp_path / "zoo2"
    d.mkdir()
    item = "  - {{name: {n}, architecture: resnet14t, url: {u}, sha256: null, source: ours, filename: s.pth, " \
           "metrics: {{published: null}}}}\n"
    d.joinpath("s.yaml").write_text("family: s\nmodels:\n" + "".join(
        item.format(n=n, u=_url(server, "/z/shared.pth")) for n in ("s.raw", "s.ema")))
    monkeypatch.setenv("VISIONATTN_ZOO_DIR", str(d))
    hub.reload_manifest()
    try:
        with pytest.warns(hub.ZooPinWarning):
            hub.fetch_entry("s.raw", progress=False)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            hub.fetch_entry("s.ema", progress=False)  # same file, same pin: no second download, no warning
        assert server.hits.count("/z/shared.pth") == 1
        d.joinpath("s.yaml").write_text(d.joinpath("s.yaml").read_text().replace(
            "s.ema, architecture: resnet14t, url: " + _url(server, "/z/shared.pth"),
            "s.ema, architecture: resnet14t, url: " + _url(server, "/z/other.pth")))
        hub.reload_manifest()
        with pytest.raises(ValueError, match="'s.raw' and 's.ema' would share the cache file 's.pth'"):
            hub.list_entries()
    finally:
        hub.reload_manifest()


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
        d.joinpath("x.yaml").write_text("family: x\nmodels:\n  - name: a\n    architecture: m\n"
                                        "    url: https://example.com/a.pth\n    revision: main\n    sha256: null\n"
                                        "    source: official\n    metrics: {published: null}\n")
        hub.reload_manifest()
        with pytest.raises(ValueError, match=r"x.yaml: a: revision is the 40-hex commit of a Hugging Face file"):
            hub.list_entries()
    finally:
        hub.reload_manifest()


# --- the repository's manifests ------------------------------------------------------------------

def test_repository_manifests_name_a_url_a_converter_and_a_model():
    """Every model_zoo/*.yaml entry: a download URL, a registered converter, a registered model,
    a licence, and a cache file of its own (never the URL's last segment)."""
    import timm

    import visionattn

    hub.reload_manifest()
    entries = hub.list_entries()
    assert entries and len({e.name for e in entries}) == len(entries)
    models = set(visionattn.list_models())
    for e in entries:
        assert e.url and e.url.startswith("https://"), e.name
        assert (e.converter or e.family) in hub.CONVERTERS, f"{e.name}: no converter {e.converter or e.family!r}"
        assert e.model in models or timm.is_model(e.model), f"{e.name}: no model {e.model!r}"
        assert e.license, f"{e.name}: no licence"
        assert e.filename.startswith(e.name.split(".")[0]), f"{e.name}: cache file {e.filename!r}"
    files = {}
    for e in entries:
        assert files.setdefault(e.filename, e.url) == e.url, f"{e.filename} is shared by different URLs"
    hf = [e for e in entries if e.hf is not None]
    assert {e.model for e in hf} >= {"matchstereo_tiny", "matchstereo_small", "matchstereo_base"}
    assert all(e.hf.repo_id == "Tingman/MatchAttention" for e in hf)


def test_timm_pretrained_tags_are_the_zoo_entries():
    """timm.create_model(NAME, pretrained=True) and visionattn.create_model(NAME, pretrained=True)
    name the same entry: each zoo entry of a visionattn timm backbone is a timm pretrained tag with
    the same URL, timm's default tag is the zoo's default entry, and every tag with a URL is in the zoo."""
    from timm.models import get_pretrained_cfg, list_pretrained

    from visionattn.factory import _our_timm_models

    hub.reload_manifest()
    ours = set(_our_timm_models())
    zoo = {e.name: e for e in hub.list_entries() if e.model in ours}
    assert zoo, "the zoo has no entry for a timm backbone"
    for name, e in zoo.items():
        cfg = get_pretrained_cfg(name)
        assert cfg is not None and cfg.url == e.url, name
    for arch in {e.model for e in zoo.values()}:
        timm_default = get_pretrained_cfg(arch)
        assert f"{arch}.{timm_default.tag}" == hub.get_entry(arch).name, arch
    for tag in list_pretrained():
        arch = tag.split(".")[0]
        cfg = get_pretrained_cfg(tag)
        if arch in ours and cfg.url and not cfg.hf_hub_id:
            assert tag in zoo, f"timm tag {tag} has a URL but no zoo entry"


def test_checkpoints_written_by_the_trainer_load_without_the_engine(tmp_path):
    """A tools/train.py checkpoint (MessageHub HistoryBuffers, the one-cycle scheduler's state, optimizer
    state, ``network.``-prefixed weights) is read by the hub alone, as the inference tools read it: in a
    fresh process that never imports visionattn.engine (which registers mmengine's classes for the Runner)."""
    import subprocess
    import sys

    from mmengine.logging import HistoryBuffer

    from visionattn.engine.schedulers import OneCycleLR

    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=0.1)
    sched = OneCycleLR(opt, eta_max=0.1, total_steps=20, by_epoch=False)
    opt.step()
    sched.step()
    loss = HistoryBuffer()
    loss.update(1.5)
    path = tmp_path / "epoch_1.pth"
    torch.save(dict(meta=dict(epoch=1, iter=1), state_dict={f"network.{k}": v for k, v in net.state_dict().items()},
                    optimizer=opt.state_dict(), param_schedulers=[sched.state_dict()],
                    message_hub=dict(log_scalars={"train/loss": loss}, runtime_info={"iter": 1})), path)
    code = ("import sys, visionattn.hub as h; c = h.read_checkpoint(sys.argv[1]); "
            "assert 'visionattn.engine' not in sys.modules; print(sorted(c['state_dict']))")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "network.weight" in proc.stdout
