"""Evaluate a checkpoint on a config's test set.

The program is visionattn/cli/test.py, installed as `visionattn-test`; this file runs it in a clone.
"""
import sys

from visionattn.cli import run

if __name__ == "__main__":
    sys.exit(run("test"))
