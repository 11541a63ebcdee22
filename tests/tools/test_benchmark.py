"""tools/benchmark.py on CPU: tables and JSON for models and ops (timings are never asserted)."""
import json
import pkgutil

import pytest
import torch

import visionattn.ops

TOY_OP = '''
import torch
from visionattn.ops.dispatch import pick

IMPLS = ("cuda_only", "fused", "reference")


def toy_softmax_op(x, impl="auto"):
    """x: (B, N) -> softmax over N."""
    impl = pick("toy_softmax_op", impl, {"cuda_only": x.is_cuda, "fused": True, "reference": True})
    if impl in ("fused", "cuda_only"):
        return torch.softmax(x, -1)
    e = (x - x.max(-1, keepdim=True).values).exp()
    return e / e.sum(-1, keepdim=True)


def example_inputs(device="cpu", dtype=torch.float32, b=2, n=16):
    return {"x": torch.randn(b, n, device=device, dtype=dtype)}
'''


def _run(load_tool, capsys, tmp_path, argv):
    rc = load_tool("benchmark").main([*argv, "--warmup", "1", "--iters", "2", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    files = sorted(tmp_path.glob("*.json"))
    return rc, out, json.loads(files[-1].read_text()) if files else None


def test_models_in_one_run(load_tool, capsys, tmp_path):
    rc, out, report = _run(load_tool, capsys, tmp_path, ["test_vit", "resnet10t", "--batch", "2", "--shape",
                                                          "h=32", "w=32", "--impl", "auto,reference"])
    assert rc == 0, out
    assert report["machine"]["torch"] == torch.__version__ and report["machine"]["cpu"]
    assert report["machine"]["device"] == "cpu" and "date" in report["machine"]
    rows = report["results"]
    assert [(r["target"], r["impl"]) for r in rows] == [
        ("test_vit", "auto"), ("test_vit", "reference"), ("resnet10t", "auto"), ("resnet10t", "reference")]
    for r in rows:
        assert r["kind"] == "model" and r["batch"] == 2 and r["latency_ms"] > 0
        assert r["throughput"] == pytest.approx(2e3 / r["latency_ms"]) and r["throughput_unit"] == "img/s"
        assert r["peak_mem_mib"] is None  # only measured on CUDA
    assert rows[0]["speedup"] == 1.0
    assert rows[1]["max_abs_diff"] == 0.0  # same weights and input: without ops the impls agree
    assert "test_vit" in out and "speed-up" in out and "img/s" in out


def test_rounds_take_turns(load_tool, capsys, tmp_path, monkeypatch):
    tool = load_tool("benchmark")
    order = []
    timed_calls = tool.timed_calls

    def spy(fn, device, iters):
        order.append(fn)
        return timed_calls(fn, device, iters)
    monkeypatch.setattr(tool, "timed_calls", spy)
    rc, out, report = _run(lambda name: tool, capsys, tmp_path, ["test_vit", "resnet10t", "--batch", "2", "--shape",
                                                                 "h=32", "w=32", "--rounds", "3"])
    assert rc == 0, out
    a, b = order[0], order[1]
    assert a is not b and order == [a, b] * 3  # first pass, then two rounds taking turns
    for r in report["results"]:
        assert len(r["rounds_ms"]) == 3 and "times_ms" not in r
        assert r["latency_ms_min"] <= min(r["rounds_ms"]) and r["latency_ms"] <= r["latency_ms_max"]
        assert r["throughput"] == pytest.approx(2e3 / r["latency_ms"])
    assert report["settings"]["rounds"] == 3


def test_train_mode_and_bad_target(load_tool, capsys, tmp_path):
    rc, out, report = _run(load_tool, capsys, tmp_path, ["test_vit", "--batch", "1", "--mode", "train",
                                                          "--shape", "h=32", "w=32"])
    assert rc == 0 and report["settings"]["mode"] == "train" and report["results"][0]["latency_ms"] > 0
    assert load_tool("benchmark").main(["not_a_model_or_op", "--out", str(tmp_path / "x")]) == 2
    assert "error: Unknown model 'not_a_model_or_op'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert load_tool("benchmark").main(["test_vit", "--impl", "auto,warp_speed", "--out", ""]) == 2
    assert "no op of visionattn has implementation(s) ['warp_speed']" in capsys.readouterr().err


@pytest.fixture
def toy_op(tmp_path, monkeypatch):
    """An op module following the contract, visible as visionattn.ops.toy_softmax_op for this test."""
    d = tmp_path / "ops"
    d.mkdir()
    (d / "toy_softmax_op.py").write_text(TOY_OP)
    monkeypatch.setattr(visionattn.ops, "__path__", [*visionattn.ops.__path__, str(d)])
    yield "toy_softmax_op"
    import sys

    sys.modules.pop("visionattn.ops.toy_softmax_op", None)


def test_op_with_official(load_tool, capsys, tmp_path, toy_op):
    official = tmp_path / "official_softmax.py"
    official.write_text("import torch\n\ndef softmax(x):\n    return torch.nn.functional.softmax(x, dim=-1)\n")
    out_dir = tmp_path / "res"
    rc, out, report = _run(load_tool, capsys, out_dir, [toy_op, "--shape", "b=3", "n=8",
                                                         "--official", f"{official}:softmax", "--mode", "train"])
    assert rc == 0, out
    rows = report["results"]
    assert [r["impl"] for r in rows] == ["cuda_only", "fused", "reference", "official"]
    assert "does not support these inputs" in rows[0]["skipped"]  # default impls: skipped, not failed
    assert all(r["kind"] == "op" and r["throughput_unit"] == "calls/s" and r["batch"] is None for r in rows[1:])
    assert rows[1]["speedup"] == 1.0 and "skipped" in out
    assert report["settings"]["shape"] == {"b": 3, "n": 8}
    rc, out, report = _run(load_tool, capsys, tmp_path / "res2", [toy_op, "--impl", "reference,fused"])
    assert [r["impl"] for r in report["results"]] == ["reference", "fused"]
    assert report["results"][1]["max_abs_diff"] < 1e-6
    rc, out, report = _run(load_tool, capsys, tmp_path / "res3", [toy_op, "--impl", "cuda_only,fused"])
    assert rc == 1 and "error: ValueError" in out and report["results"][0]["error"]


def test_model_with_official_and_checkpoint(load_tool, capsys, tmp_path):
    import timm

    torch.save(timm.create_model("resnet10t", num_classes=4).state_dict(), tmp_path / "w.pth")
    official = tmp_path / "official_resnet.py"
    official.write_text("import timm, torch\n\ndef resnet10t(**kw):\n    m = timm.create_model('resnet10t', **kw)\n"
                        f"    m.load_state_dict(torch.load({str(tmp_path / 'w.pth')!r}))\n    return m\n")
    argv = ["resnet10t", "--batch", "1", "--shape", "h=32", "w=32", "--model-kwargs", "num_classes=4",
            "--official", f"{official}:resnet10t"]
    rc, out, report = _run(load_tool, capsys, tmp_path / "a", [*argv, "--checkpoint", str(tmp_path / "w.pth")])
    assert rc == 0, out
    assert [r["impl"] for r in report["results"]] == ["auto", "official"]
    assert report["results"][1]["max_abs_diff"] == 0.0  # ours loaded the checkpoint the official model loads
    assert report["settings"]["checkpoint"] == str(tmp_path / "w.pth")
    rc, out, report = _run(load_tool, capsys, tmp_path / "b", argv)  # without it: official weights are shared
    assert rc == 0 and report["results"][1]["max_abs_diff"] == 0.0
    torch.save({"fc.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    assert load_tool("benchmark").main([*argv, "--checkpoint", str(tmp_path / "bad.pth"), "--out", ""]) == 2


def test_profile_counts_each_operator_per_call(load_tool, capsys, tmp_path, toy_op):
    rc, out, report = _run(load_tool, capsys, tmp_path, [toy_op, "--impl", "reference", "--profile"])
    assert rc == 0, out
    prof = report["results"][0]["profile"]
    assert report["settings"]["profile"] is True
    per_call = {t["name"]: t["per_call"] for t in prof["top"]}
    # the reference softmax runs max, sub, exp, sum and div once per call
    assert per_call.get("aten::exp") == 1 and per_call.get("aten::div") == 1, prof["top"]
    assert prof["device_ms"] > 0 and prof["queued_ms"] > 0 and prof["launches"] >= 5
    assert sum(t["share"] for t in prof["top"]) <= 1 + 1e-9
    assert "profile, per call (operators" in out and "aten::exp" in out
    with pytest.raises(SystemExit):
        load_tool("benchmark").main(["test_vit", "--mode", "train-e2e", "--profile", "--out", ""])
    assert "or --profile" in capsys.readouterr().err


def _real_ops():
    return [m.name for m in pkgutil.iter_modules(visionattn.ops.__path__)
            if m.name not in ("dispatch",) and not m.name.startswith("_")]


@pytest.mark.parametrize("op", _real_ops() or [pytest.param(None, marks=pytest.mark.skip(reason="no ops yet"))])
def test_every_op_benchmarks_on_cpu(load_tool, capsys, tmp_path, op):
    """Every op of the library follows the op-module contract and runs its CPU implementations."""
    import importlib

    module = importlib.import_module(f"visionattn.ops.{op}")
    assert "reference" in module.IMPLS
    rc, out, report = _run(load_tool, capsys, tmp_path, [op, "--impl", "reference", "--device", "cpu"])
    assert rc == 0, out
    assert report["results"][0]["latency_ms"] > 0


@pytest.mark.cuda
def test_cuda_records_gpu_and_peak_memory(load_tool, capsys, tmp_path):
    rc, out, report = _run(load_tool, capsys, tmp_path, ["test_vit", "resnet10t", "--device", "cuda", "--batch", "4",
                                                          "--dtype", "float16", "--mode", "train"])
    assert rc == 0, out
    assert report["machine"]["gpu"] == torch.cuda.get_device_name() and report["machine"]["cuda"]
    for r in report["results"]:
        assert r["peak_mem_mib"] > 0 and r["latency_ms"] > 0


@pytest.mark.cuda
@pytest.mark.parametrize("op", _real_ops() or [pytest.param(None, marks=pytest.mark.skip(reason="no ops yet"))])
def test_every_op_benchmarks_on_cuda(load_tool, capsys, tmp_path, op):
    rc, out, report = _run(load_tool, capsys, tmp_path, [op, "--device", "cuda"])
    assert rc == 0, out
    ran = [r for r in report["results"] if "skipped" not in r]  # e.g. sdpa_gqa needs uniform groups
    assert ran and all("error" not in r and r["peak_mem_mib"] is not None for r in ran), out


@pytest.mark.cuda
def test_cuda_profile_sees_kernels_in_graph_replays(load_tool, capsys, tmp_path):
    rc, out, report = _run(load_tool, capsys, tmp_path, ["resnet10t", "--device", "cuda", "--batch", "8",
                                                          "--cuda-graph", "--profile"])
    assert rc == 0, out
    prof = report["results"][0]["profile"]
    # resnet10t: 11 convolutions at least, each a kernel, replayed from the graph
    assert prof["launches"] >= 11 and 0 < prof["device_ms"] and prof["top"][0]["ms"] > 0, prof
    assert "profile, per call (kernels" in out


@pytest.mark.cuda
def test_cuda_graph_rows_of_a_self_graphing_network_capture_their_own(load_tool, capsys, tmp_path):
    # ScatterFormer keeps its graphs inside the module: a row forcing an op's reference must not replay
    # the graphs the first row captured with the op's kernel
    rc, out, report = _run(load_tool, capsys, tmp_path, [
        "scatterformer_waymo", "--device", "cuda", "--batch", "1", "--cuda-graph", "--profile", "--warmup", "2",
        "--iters", "3", "--shape", "points=3000", "--impl", "auto,batch_norm_act:reference",
        "--model-kwargs", "point_cloud_range=[-7.68,-7.68,-2.0,7.68,7.68,4.0]"])
    assert rc == 0, out
    auto, forced = (row["profile"] for row in report["results"])
    assert "_batch_norm_act_kernel" not in {t["name"] for t in forced["top"]}, forced
    # about a hundred norms, each one kernel in the first row and two or three (norm, add, ReLU) in the second
    assert forced["launches"] >= auto["launches"] + 100, (auto["launches"], forced["launches"])


@pytest.mark.cuda
def test_cuda_graph_rows_count_the_graph_memory(load_tool, capsys, tmp_path):
    # the graph's pool is allocated at capture, before the timed replays: it must still show up
    rc, out, report = _run(load_tool, capsys, tmp_path, ["resnet10t", "--device", "cuda", "--batch", "8",
                                                          "--cuda-graph"])
    assert rc == 0, out
    assert report["machine"]["cudnn_benchmark"] is True
    (row,) = report["results"]
    assert row["peak_mem_mib"] > 1, row
