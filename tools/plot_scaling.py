"""Log-log plot of latency and peak memory against input pixels, from tools/benchmark.py JSON files.

    python tools/plot_scaling.py benchmarks/restore_rwkv_cuda_float32_infer_*.json \
        --impl triton --out docs/restore_rwkv_scaling.png

Each JSON file is one ``tools/benchmark.py MODEL --shape h=.. w=..`` run; the rows of ``--impl`` (and
``--target``, when the files hold several) give one point per input size (pixels = batch * h * w).
The fitted slope of log(time) and log(memory) against log(pixels) is printed and shown in the
legend: 1 means linear growth. The latency slope between the two largest sizes is shown too, and the
linear reference line runs through the largest size's latency: a fixed per-launch cost flattens the
small sizes. Several files of the same size: the latest run counts.
"""
import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np


def load_points(paths: List[str], impl: str, target: str = None) -> List[Dict]:
    """One point per pixel count: {'pixels', 'latency_ms', 'peak_mem_mib', 'size', 'date'}."""
    points: Dict[int, Dict] = {}
    for path in paths:
        report = json.loads(Path(path).read_text())
        shape = report["settings"].get("shape") or {}
        if "h" not in shape or "w" not in shape:
            raise ValueError(f"{path}: not a model run with --shape h=.. w=.. (shape {shape})")
        for row in report["results"]:
            if row.get("impl") != impl or (target and row.get("target") != target) or "latency_ms" not in row:
                continue
            pixels = int(shape["h"]) * int(shape["w"]) * int(row.get("batch") or 1)
            point = dict(pixels=pixels, latency_ms=row["latency_ms"], peak_mem_mib=row.get("peak_mem_mib"),
                         size=f"{shape['h']}x{shape['w']}", date=report["machine"]["date"])
            if pixels not in points or points[pixels]["date"] <= point["date"]:
                points[pixels] = point
    if len(points) < 2:
        raise ValueError(f"need rows of impl {impl!r} at two or more sizes; found {len(points)} in {len(paths)} file(s)")
    return [points[p] for p in sorted(points)]


def slope(x: List[float], y: List[float]) -> float:
    """Least-squares slope of log y against log x."""
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def plot(points: List[Dict], out: str, title: str) -> Tuple[float, float]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    px = [p["pixels"] for p in points]
    ms = [p["latency_ms"] for p in points]
    mem = [p["peak_mem_mib"] for p in points]
    s_time = slope(px, ms)
    s_mem = slope(px, mem) if all(m for m in mem) else float("nan")
    s_tail = slope(px[-2:], ms[-2:])
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=100)
    ax.loglog(px, ms, "o-", label=f"latency (ms), slope {s_time:.2f} ({s_tail:.2f} at the two largest)")
    if all(m for m in mem):
        ax.loglog(px, mem, "s-", label=f"peak memory (MiB), slope {s_mem:.2f}")
    ref = np.array([px[0], px[-1]], dtype=float)
    ax.loglog(ref, ms[-1] * ref / ref[-1], ":", color="gray", label="linear in pixels (through the largest)")
    ax.set_xticks(px)
    ax.set_xticklabels([p["size"] for p in points], fontsize=8)
    ax.minorticks_off()
    ax.set_xlabel("input size (pixels, log scale)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return s_time, s_mem


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", help="tools/benchmark.py JSON results, one per input size")
    ap.add_argument("--impl", default="auto", help="implementation row to plot")
    ap.add_argument("--target", default=None, help="model name, when the files hold several")
    ap.add_argument("--title", default=None)
    ap.add_argument("--out", default="scaling.png")
    args = ap.parse_args(argv)
    try:
        points = load_points(args.files, args.impl, args.target)
    except (ValueError, FileNotFoundError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    first = json.loads(Path(args.files[0]).read_text())
    m, s = first["machine"], first["settings"]
    title = args.title or f"{s['targets'][0]} ({args.impl}), {m['gpu'] or m['cpu']}, {s['dtype']} {s['mode']}"
    s_time, s_mem = plot(points, args.out, title)
    for p in points:
        print(f"{p['size']:>10}  {p['latency_ms']:10.2f} ms  {p['peak_mem_mib'] or float('nan'):10.1f} MiB")
    s_tail = slope([p["pixels"] for p in points[-2:]], [p["latency_ms"] for p in points[-2:]])
    print(f"log-log slope: time {s_time:.3f} ({s_tail:.3f} between the two largest sizes), memory {s_mem:.3f} "
          f"(1 = linear in pixels); wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
