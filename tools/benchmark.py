"""Throughput, latency and peak memory of models or ops, several implementations in one process.

The program is visionattn/cli/benchmark.py, installed as `visionattn-benchmark`; this file runs it in a clone.
"""
import sys

from visionattn.cli import run

if __name__ == "__main__":
    sys.exit(run("benchmark"))
