"""tools/plot_scaling.py: points from tools/benchmark.py JSON, log-log slopes, the PNG."""
import json

import pytest


def write_run(path, size, latency, mem, date, impl="triton", batch=1):
    report = {"machine": {"date": date, "gpu": "TestGPU", "cpu": "cpu"},
              "settings": {"targets": ["restore_rwkv"], "shape": {"h": size, "w": size}, "dtype": "float32",
                           "mode": "infer"},
              "results": [{"target": "restore_rwkv", "impl": impl, "batch": batch, "latency_ms": latency,
                           "peak_mem_mib": mem},
                          {"target": "restore_rwkv", "impl": "official", "batch": batch, "latency_ms": 1e6,
                           "peak_mem_mib": 1.0}]}
    path.write_text(json.dumps(report))
    return str(path)


def test_slopes_and_png(tmp_path, load_tool, capsys):
    tool = load_tool("plot_scaling")
    sizes = (128, 256, 512, 1024)
    linear = [write_run(tmp_path / f"lin{s}.json", s, 0.01 * s * s, 0.02 * s * s, "2026-01-01") for s in sizes]
    points = tool.load_points(linear, "triton")
    assert [p["pixels"] for p in points] == [s * s for s in sizes]  # sorted, official rows ignored
    out = tmp_path / "plot.png"
    s_time, s_mem = tool.plot(points, str(out), "t")
    assert s_time == pytest.approx(1.0) and s_mem == pytest.approx(1.0)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    quad = [write_run(tmp_path / f"q{s}.json", s, 1e-6 * s ** 4, 1.0 * s * s, "2026-01-01") for s in sizes]
    assert tool.slope([p["pixels"] for p in tool.load_points(quad, "triton")],
                      [p["latency_ms"] for p in tool.load_points(quad, "triton")]) == pytest.approx(2.0)
    # fixed cost at the small sizes, linear at the two largest: the tail slope is printed
    bent = [write_run(tmp_path / f"b{s}.json", s, max(100.0, 1e-3 * s * s), 1.0 * s * s, "2026-01-01") for s in sizes]
    assert tool.main(bent + ["--impl", "triton", "--out", str(tmp_path / "b.png")]) == 0
    assert "(1.000 between the two largest sizes)" in capsys.readouterr().out
    # a later run of the same size replaces the earlier one
    newer = write_run(tmp_path / "new128.json", 128, 999.0, 1.0, "2026-02-01")
    assert tool.load_points(linear + [newer], "triton")[0]["latency_ms"] == 999.0


def test_errors(tmp_path, load_tool, capsys):
    tool = load_tool("plot_scaling")
    one = write_run(tmp_path / "a.json", 128, 1.0, 1.0, "2026-01-01")
    assert tool.main([one, "--impl", "triton", "--out", str(tmp_path / "x.png")]) == 2
    assert "two or more sizes" in capsys.readouterr().err
    with pytest.raises(ValueError, match="impl 'nope'"):
        tool.load_points([one, one], "nope")
