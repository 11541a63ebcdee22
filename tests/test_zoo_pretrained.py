"""Pretrained weights end to end, every file served from 127.0.0.1.

- One path: ``timm.create_model(NAME, pretrained=True)`` and ``visionattn.create_model(NAME,
  pretrained=True)`` read the same zoo entry (one download, one cache file named after the entry,
  the entry's converter and converter kwargs, strict) and give the same weights.
- Hugging Face files: ``huggingface_hub.hf_hub_download`` against a local Hub (``HF_ENDPOINT``), the
  commit of the first download pinned with the hash, offline mode, a changed file refused.
"""
import hashlib
import http.server
import io
import json
import threading
import warnings

import pytest
import timm
import torch

import visionattn
from visionattn import hub


class _Hub(http.server.BaseHTTPRequestHandler):
    """Plain files at their paths, and a Hugging Face Hub: ``/{org}/{repo}/resolve/{rev}/{file}``
    answered with the ``X-Repo-Commit``/``ETag`` headers hf_hub_download reads."""

    files = {}      # path -> bytes
    repos = {}      # repo id -> {commit: {filename: bytes}}
    branches = {}   # repo id -> {branch: commit}

    def _answer(self, body_too: bool):
        self.server.hits.append(f"{self.command} {self.path}")
        path = self.path.split("?")[0]
        parts = path.strip("/").split("/")
        if "resolve" in parts:
            i = parts.index("resolve")
            repo, rev, name = "/".join(parts[:i]), parts[i + 1], "/".join(parts[i + 2:])
            commit = self.branches.get(repo, {}).get(rev, rev)
            body = self.repos.get(repo, {}).get(commit, {}).get(name)
            headers = {"X-Repo-Commit": commit} if body is not None else {}
            if body is not None:
                headers["ETag"] = f'"{hashlib.sha256(body).hexdigest()}"'
        else:
            body, headers = self.files.get(path), {}
        if body is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")  # what the Hub says of a missing file
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        for k, v in {**headers, "Content-Type": "application/octet-stream", "Content-Length": str(len(body))}.items():
            self.send_header(k, v)
        self.end_headers()
        if body_too:
            self.wfile.write(body)

    def do_GET(self):  # noqa: N802
        self._answer(True)

    def do_HEAD(self):  # noqa: N802
        self._answer(False)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    srv.hits = []
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _url(server, path):
    return f"http://127.0.0.1:{server.server_address[1]}{path}"


def _bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.fixture
def zoo(tmp_path, monkeypatch):
    """Write YAML manifests into a temporary zoo and point visionattn at it (and at an empty cache)."""
    monkeypatch.setenv("VISIONATTN_HOME", str(tmp_path / "home"))
    for var in ("VISIONATTN_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    d = tmp_path / "zoo"
    d.mkdir()
    monkeypatch.setenv("VISIONATTN_ZOO_DIR", str(d))

    def write(name, text):
        d.joinpath(name).write_text(text)
        hub.reload_manifest()

    yield write
    hub.reload_manifest()


def _same(a: torch.nn.Module, b, skip=()):
    sa, sb = a.state_dict(), b if isinstance(b, dict) else b.state_dict()
    keys = [k for k in sa if not k.startswith(skip)]
    assert keys and all(torch.equal(sa[k], sb[k]) for k in keys)


def test_timm_and_visionattn_load_the_same_zoo_entry(zoo, server, tmp_path):
    """BiFormer-T: the timm tag 'in1k' is the zoo entry biformer_tiny.in1k, with its converter kwargs
    (here ema=True). Both factories give the EMA tensors; one download; the cache file is the entry's."""
    raw = timm.create_model("biformer_tiny").state_dict()
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in raw.items()}
    _Hub.files["/bt/root/content"] = _bytes({"model": raw, "model_ema": ema})
    zoo("biformer.yaml", f"""family: biformer
license: MIT
models:
  - name: biformer_tiny.in1k
    architecture: biformer_tiny
    url: {_url(server, "/bt/root/content")}
    sha256: null
    source: official
    converter_kwargs: {{ema: true}}
    default: true
    metrics: {{published: {{top1: 81.4}}}}
""")
    with pytest.warns(hub.ZooPinWarning, match="biformer_tiny.in1k"):
        a = timm.create_model("biformer_tiny", pretrained=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", hub.ZooPinWarning)  # pinned once
        b = visionattn.create_model("biformer_tiny", pretrained=True)
    _same(a, ema)
    _same(b, ema)
    assert server.hits.count("GET /bt/root/content") == 1
    cache = tmp_path / "home" / "checkpoints"
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) == [
        "biformer_tiny.in1k.pth", hub.LOCK_NAME]
    assert a.pretrained_cfg["file"] == str(cache / "biformer_tiny.in1k.pth") and "state_dict" not in a.pretrained_cfg

    # the usual adaptations of a pretrained model: a new classifier, a feature extractor
    m = visionattn.create_model("biformer_tiny.in1k", pretrained=True, num_classes=7)
    assert m.head.weight.shape == (7, 512)
    _same(m, ema, skip=("head.",))
    m = timm.create_model("biformer_tiny.in1k", pretrained=True, features_only=True)
    assert torch.equal(m.model.stages[3].blocks[1].attn.qkv.weight, ema["stages.3.blocks.1.attn.qkv.weight"])
    assert "state_dict" not in m.pretrained_cfg and server.hits.count("GET /bt/root/content") == 1


def test_timm_path_is_strict(zoo, tmp_path):
    sd = timm.create_model("biformer_tiny").state_dict()
    del sd["stages.2.blocks.3.mlp.fc1.weight"]
    torch.save({"model": sd}, tmp_path / "cut.pth")
    with pytest.raises(RuntimeError, match=r"do not fit BiFormer: missing keys \['stages.2.blocks.3.mlp.fc1.weight'\]"):
        timm.create_model("biformer_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "cut.pth")))
    zoo("biformer.yaml", "family: biformer\nmodels: []\n")
    with pytest.raises(RuntimeError, match="timm pretrained tag 'biformer_tiny.in1k' has no model-zoo entry"):
        timm.create_model("biformer_tiny", pretrained=True)


def test_ffnet_entries_of_one_file_share_the_download(zoo, server, tmp_path):
    """FFNet-1 raw and EMA entries name one release file: one download, one cache file; the features
    model keeps its per-stage norms at their initial values (ImageNet weights have none)."""
    net = timm.create_model("ffnet_1")
    raw = net.state_dict()
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in raw.items()}
    _Hub.files["/ffnet/ffnet_1.pth.tar"] = _bytes({"state_dict": raw, "state_dict_ema": ema, "epoch": 299})
    item = """  - name: {name}
    architecture: ffnet_1
    url: {url}
    sha256: null
    source: official
    converter_kwargs: {{ema: {ema}}}
    filename: ffnet_1.in1k.pth.tar
    metrics: {{published: null}}
"""
    url = _url(server, "/ffnet/ffnet_1.pth.tar")
    zoo("ffnet.yaml", "family: ffnet\nlicense: Apache-2.0\nmodels:\n" + item.format(name="ffnet_1.in1k", url=url, ema="false")
        + item.format(name="ffnet_1.in1k_ema", url=url, ema="true"))
    with pytest.warns(hub.ZooPinWarning):
        _same(visionattn.create_model("ffnet_1", pretrained=True), raw)
    _same(timm.create_model("ffnet_1.in1k_ema", pretrained=True), ema)
    feats = visionattn.create_model("ffnet_1.in1k_ema", pretrained=True, features_only=True)
    assert server.hits.count("GET /ffnet/ffnet_1.pth.tar") == 1
    key = next(k for k in ema if k.startswith("stages.2.") and k.endswith(".weight"))
    assert torch.equal(feats.model.state_dict()[key], ema[key])
    assert torch.equal(feats.model.stage_norms[1].weight, torch.ones(160))
    lock = json.loads((tmp_path / "home" / "checkpoints" / hub.LOCK_NAME).read_text())["pins"]
    assert lock[url]["entries"] == ["ffnet_1.in1k"]  # the EMA entry found the pin already there


# --- Hugging Face Hub ---------------------------------------------------------------------------

HF_REPO = "Org/StereoWeights"
COMMIT_1, COMMIT_2 = "1" * 40, "2" * 40


@pytest.fixture
def hf_zoo(zoo, server, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", _url(server, ""))
    _Hub.repos[HF_REPO] = {COMMIT_1: {"w.pth": _bytes({"model": {"w": torch.arange(3.0)}})}}
    _Hub.branches[HF_REPO] = {"main": COMMIT_1}
    zoo("hf.yaml", f"""family: hf
license: GPL-3.0
models:
  - name: hf_net.v1
    architecture: test_resnet
    url: https://huggingface.co/{HF_REPO}/resolve/main/w.pth
    sha256: null
    source: official
    metrics: {{published: null}}
""")
    return hub.get_entry("hf_net.v1")


def test_hugging_face_file_is_pinned_to_its_commit(hf_zoo, server, tmp_path, monkeypatch):
    e = hf_zoo
    assert e.hf == hub.HfFile(HF_REPO, "w.pth", "main") and e.cached_file() is None
    with pytest.warns(hub.ZooPinWarning, match=f"at commit {COMMIT_1}.*revision: {COMMIT_1}"):
        path = hub.fetch_entry(e)
    assert path.parent.name == COMMIT_1 and path.is_relative_to(tmp_path / "home" / "checkpoints" / "huggingface")
    assert torch.equal(hub.read_checkpoint(path)["model"]["w"], torch.arange(3.0))
    pin = hub.get_pin(e)
    assert pin["revision"] == COMMIT_1 and pin["sha256"] == hub.file_sha256(path)

    # main moves on: the pinned commit is still what loads, from the cache, without asking the Hub
    _Hub.repos[HF_REPO][COMMIT_2] = {"w.pth": _bytes({"model": {"w": torch.zeros(3)}})}
    _Hub.branches[HF_REPO]["main"] = COMMIT_2
    hits = len(server.hits)
    with warnings.catch_warnings():
        warnings.simplefilter("error", hub.ZooPinWarning)
        assert hub.fetch_entry(e) == path
    assert len(server.hits) == hits and e.cached_file() == path

    monkeypatch.setenv("VISIONATTN_OFFLINE", "1")
    assert hub.fetch_entry(e) == path

    # the file of the pinned commit changed under its name (and the cached copy is gone): refused
    monkeypatch.delenv("VISIONATTN_OFFLINE")
    _Hub.repos[HF_REPO][COMMIT_1]["w.pth"] = _bytes({"model": {"w": torch.ones(3)}})
    for p in (tmp_path / "home" / "checkpoints" / "huggingface").rglob("*"):
        if p.is_file() or p.is_symlink():
            p.unlink()
    with pytest.raises(hub.ChecksumError, match=f"pinned to SHA-256 {pin['sha256']}"):
        hub.fetch_entry(e)


def test_hugging_face_offline_without_cache_and_missing_file(hf_zoo, server, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hits = len(server.hits)
    with pytest.raises(RuntimeError, match="offline mode.*'w.pth' of Hugging Face repository 'Org/StereoWeights'.*"
                                           "visionattn-zoo download hf_net.v1"):
        hub.fetch_entry(hf_zoo)
    assert len(server.hits) == hits
    monkeypatch.delenv("HF_HUB_OFFLINE")
    del _Hub.repos[HF_REPO][COMMIT_1]["w.pth"]
    with pytest.raises(RuntimeError, match="Hugging Face Hub refused 'w.pth'.*404"):
        hub.fetch_entry(hf_zoo)
