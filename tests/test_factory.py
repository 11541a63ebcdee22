"""visionattn.create_model / list_models: timm backbones, task networks, checkpoints, errors."""
import subprocess
import sys

import pytest
import timm
import torch
import torch.nn as nn

import visionattn
from visionattn import hub
from visionattn import registry


@pytest.fixture
def tiny_network():
    """A task network registered for the test only (removed afterwards)."""

    class TinyNet(nn.Module):
        def __init__(self, width=4):
            super().__init__()
            self.stem = nn.Conv2d(3, width, 3, padding=1)
            self.head = nn.Conv2d(width, 1, 1)

        def forward(self, x):
            return self.head(self.stem(x).relu())

    registry.register_network("tiny_testnet", family="tinytest", task="restoration",
                              example_inputs=lambda b: (torch.randn(b, 3, 8, 8),))(TinyNet)
    yield TinyNet
    del registry.NETWORKS["tiny_testnet"]
    hub.CONVERTERS.pop("tinytest", None)


def test_list_models_pattern(tiny_network):
    assert "tiny_testnet" in visionattn.list_models()
    assert visionattn.list_models("tiny_*") == ["tiny_testnet"]
    assert visionattn.list_models("no_such_*") == []


def test_create_task_network_and_timm_model(tiny_network):
    net = visionattn.create_model("tiny_testnet", width=6)
    assert isinstance(net, tiny_network) and net.stem.out_channels == 6
    m = visionattn.create_model("resnet10t", num_classes=7)
    assert m.fc.out_features == 7


def test_unknown_name_suggests_close_matches(tiny_network):
    with pytest.raises(ValueError, match=r"Unknown model 'tiny_tesnet'.*Did you mean: tiny_testnet"):
        visionattn.create_model("tiny_tesnet")
    with pytest.raises(ValueError, match="model zoo has no weights for 'tiny_testnet'"):
        visionattn.create_model("tiny_testnet", pretrained=True)


def _equal(a: nn.Module, b: nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_checkpoint_our_format_with_container_and_prefix(tiny_network, tmp_path):
    src = visionattn.create_model("tiny_testnet")
    path = tmp_path / "ours.pth"
    # as mmengine saves it from a task model wrapping the network
    torch.save({"state_dict": {f"net.{k}": v for k, v in src.state_dict().items()}, "meta": {"epoch": 1}}, path)
    _equal(visionattn.create_model("tiny_testnet", checkpoint=str(path)), src)


def test_checkpoint_official_format_through_converter(tiny_network, tmp_path):
    src = visionattn.create_model("tiny_testnet")
    rename = {"stem": "conv_first", "head": "conv_last"}

    @hub.register_converter("tinytest")
    def convert(checkpoint, model):
        return {k.replace("conv_first", "stem").replace("conv_last", "head"): v
                for k, v in checkpoint["params_ema"].items()}

    official = {"params_ema": {rename[k.split(".")[0]] + k[k.index("."):]: v for k, v in src.state_dict().items()}}
    path = tmp_path / "official.pth"
    torch.save(official, path)
    _equal(visionattn.create_model("tiny_testnet", checkpoint=str(path)), src)
    # a file that neither matches our keys nor converts is refused, naming the mismatch
    torch.save({"params_ema": {"conv_first.weight": torch.zeros(1)}}, tmp_path / "wrong.pth")
    with pytest.raises((RuntimeError, KeyError)):
        visionattn.create_model("tiny_testnet", checkpoint=str(tmp_path / "wrong.pth"))


def test_checkpoint_without_converter_is_a_clear_error(tiny_network, tmp_path):
    torch.save({"model": {"foreign.weight": torch.zeros(1)}}, tmp_path / "x.pth")
    with pytest.raises(RuntimeError, match="no converter is registered for family 'tinytest'"):
        visionattn.create_model("tiny_testnet", checkpoint=str(tmp_path / "x.pth"))
    with pytest.raises(FileNotFoundError):
        visionattn.create_model("tiny_testnet", checkpoint=str(tmp_path / "missing.pth"))


def test_checkpoint_into_features_only_timm_model(tmp_path):
    src = timm.create_model("resnet10t", num_classes=5)
    torch.save({"state_dict": src.state_dict()}, tmp_path / "r.pth")
    feats = visionattn.create_model("resnet10t", checkpoint=str(tmp_path / "r.pth"), num_classes=5,
                                    features_only=True, out_indices=(1, 2))
    assert torch.equal(feats.state_dict()["layer1.0.conv1.weight"], src.state_dict()["layer1.0.conv1.weight"])
    outs = feats(torch.randn(1, 3, 32, 32))
    assert [o.shape[1] for o in outs] == feats.feature_info.channels()


def test_checkpoint_from_url(tmp_path, monkeypatch):
    import http.server
    import threading

    src = timm.create_model("resnet10t", num_classes=3)
    (tmp_path / "srv").mkdir()
    torch.save(src.state_dict(), tmp_path / "srv" / "r10.pth")
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path / "srv"))  # noqa: E731
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    monkeypatch.setenv("VISIONATTN_HOME", str(tmp_path / "home"))
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/r10.pth"
        _equal(visionattn.create_model("resnet10t", num_classes=3, checkpoint=url), src)
        assert (tmp_path / "home" / "checkpoints" / hub.url_cache_name(url)).is_file()
    finally:
        srv.shutdown()
        srv.server_close()


def test_import_does_not_pull_extras():
    code = ("import sys, visionattn; bad = [m for m in ('mmdet', 'mmcv', 'spconv', 'cumm') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_missing_extra_names_it(monkeypatch):
    from visionattn.extras import require_extra

    monkeypatch.setitem(sys.modules, "spconv", None)  # makes `import spconv` raise ImportError
    with pytest.raises(ImportError, match=r"pip install -e '\.\[3d\]'"):
        require_extra("spconv")
