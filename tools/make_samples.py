"""Write the tiny sample datasets (real on-disk formats) under datasets/samples/.

    python tools/make_samples.py [--root datasets/samples] [--only NAME ...]
"""
import argparse
import time
from pathlib import Path

from visionattn.datasets.sample_writers import SAMPLE_WRITERS, _discover, write_samples

REPO = Path(__file__).resolve().parents[1]


def main(argv=None):
    _discover()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=str(REPO / "datasets" / "samples"), help="output folder")
    p.add_argument("--only", action="append", choices=sorted(SAMPLE_WRITERS), metavar="NAME",
                   help=f"write only this dataset (repeatable); known: {', '.join(sorted(SAMPLE_WRITERS))}")
    args = p.parse_args(argv)
    start = time.perf_counter()
    written = write_samples(Path(args.root), args.only)
    for name, folder in written.items():
        files = [f for f in folder.rglob("*") if f.is_file()]
        size = sum(f.stat().st_size for f in files)
        print(f"{name:<12} {len(files):5d} files {size / 1e6:6.2f} MB  {folder}")
    print(f"wrote {len(written)} sample dataset(s) in {time.perf_counter() - start:.1f} s")
    return written


if __name__ == "__main__":
    main()
