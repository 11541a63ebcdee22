"""Export: one small network per family to ONNX (run in onnxruntime), torch.export and TorchScript,
each file's outputs checked against the PyTorch model on the same inputs."""
import pytest
import torch

import visionattn
from visionattn.cli import export as export_cli
from visionattn.export import ExportError, compare, export_model, unsupported_reason

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def _image(h=64, w=64, c=3, seed=0):
    return torch.randn(1, c, h, w, generator=torch.Generator().manual_seed(seed))


def _stereo_pair(h=192, w=224):
    left = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0)) * 255
    return left, torch.roll(left, shifts=-4, dims=-1)


# family -> (model name, small constructor kwargs, inputs, atol)
CASES = {
    "biformer": ("biformer_tiny", dict(depths=(1, 1, 1, 1), dims=(32, 64, 128, 256), num_classes=10),
                 lambda: (_image(),), 1e-4),
    "ffnet": ("ffnet_1", dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128), stem_chs=16, num_classes=10),
              lambda: (_image(),), 1e-4),
    # KDGQA: per-image head allocation (stable sort + searchsorted, through the ONNX functions of visionattn.export)
    "gqa_vit": ("vit_small_patch16_224_kdgqa", dict(depth=1, embed_dim=64, num_heads=4, num_kv_heads=2,
                                                    img_size=64, num_classes=10),
                lambda: (_image(),), 1e-4),
    # re-parameterised (deploy) form: folded biases are derived tensors, recomputed under tracing
    "ffnet_fused": ("ffnet_1", dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128), stem_chs=16, num_classes=10,
                                    fuse=True), lambda: (_image(),), 1e-4),
    "matchstereo": ("matchstereo_tiny", dict(), lambda: _stereo_pair(), 1e-3),
    "restore_rwkv": ("restore_rwkv_light", dict(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1),
                     lambda: (_image(c=1),), 1e-4),
    "restoreformer": ("restoreformer", dict(ch=32, ch_mult=(1, 2, 2, 4), num_res_blocks=1, resolution=64,
                                            attn_resolutions=(8,), decoder_attn_resolutions=(8,), z_channels=32,
                                            embed_dim=32, n_embed=64),
                      lambda: (_image().clamp(-1, 1),), 1e-4),
}
# ONNX export takes a minute or more on two CPU cores for these (restore_rwkv: several)
SLOW = {"ffnet", "ffnet_fused", "matchstereo", "restore_rwkv", "restoreformer"}


def _params(families):
    return [pytest.param(f, marks=pytest.mark.slow) if f in SLOW else f for f in families]


def _build(family):
    name, kwargs, inputs, atol = CASES[family]
    torch.manual_seed(0)
    return visionattn.create_model(name, **kwargs).eval(), inputs(), atol


@pytest.mark.parametrize("family", _params(f for f in CASES if f != "matchstereo"))  # matchstereo: refused
def test_onnx_matches_pytorch(family, tmp_path):
    model, inputs, atol = _build(family)
    path = export_model(model, inputs, "onnx", tmp_path / "model.onnx", family=family.split("_fused")[0])
    diffs = compare(model, path, "onnx", inputs)
    assert diffs and all(d <= atol for _, d in diffs), diffs


@pytest.mark.parametrize("fmt", ["export", "torchscript"])
@pytest.mark.parametrize("family", ["ffnet_fused", "gqa_vit"] + [
    pytest.param(f, marks=pytest.mark.slow) for f in ("biformer", "ffnet", "matchstereo", "restore_rwkv",
                                                      "restoreformer")])
def test_export_and_torchscript_match_pytorch(family, fmt, tmp_path):
    model, inputs, atol = _build(family)
    path = export_model(model, inputs, fmt, tmp_path / "model.bin", family=family.split("_fused")[0])
    diffs = compare(model, path, fmt, inputs)
    assert diffs and all(d <= atol for _, d in diffs), diffs


def test_exported_graph_has_no_custom_ops():
    """portable_ops: the exported program holds ATen ops only (no visionattn:: Triton custom op)."""
    from visionattn.ops.dispatch import portable_ops

    model, inputs, _ = _build("biformer")
    with portable_ops(), torch.no_grad():
        program = torch.export.export(model, inputs)
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert not [t for t in targets if "visionattn" in t]


def test_unsupported_family_raises_with_the_reason(tmp_path):
    assert "sparse" in unsupported_reason("scatterformer", "onnx")
    assert "differ from PyTorch" in unsupported_reason("matchstereo", "onnx")
    assert unsupported_reason("matchstereo", "export") is None
    with pytest.raises(ExportError, match="scatterformer cannot be exported to onnx: .*sparse 3-D convolutions"):
        export_model(torch.nn.Identity(), (torch.zeros(1),), "onnx", tmp_path / "x.onnx", family="scatterformer")


def test_cli_refuses_scatterformer_before_building(capsys, tmp_path):
    # refused by family: spconv (the 3d extra) is not needed to hear why
    rc = export_cli.main(["scatterformer_kitti", "--format", "export", "--out", str(tmp_path / "x.pt2")])
    assert rc == 2
    assert "cannot be exported to export" in capsys.readouterr().err


def test_cli_writes_and_checks_a_file(capsys, tmp_path):
    out = tmp_path / "ffnet.pt"
    rc = export_cli.main(["ffnet_1", "--format", "torchscript", "--shape", "h=64", "w=64", "--out", str(out),
                          "--model-kwargs", "depths=(1,1,1,1)", "dims=(16,32,64,128)", "stem_chs=16",
                          "num_classes=10", "--atol", "1e-4"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert out.is_file() and "inputs (1, 3, 64, 64)" in text and "output (1, 10)" in text


def test_cli_unknown_model_is_a_clear_error(capsys):
    assert export_cli.main(["biformer_tinyy", "--format", "onnx"]) == 2
    assert "Did you mean" in capsys.readouterr().err
