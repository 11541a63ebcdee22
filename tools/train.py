"""Train any visionattn config with mmengine's Runner.

The program is visionattn/cli/train.py, installed as `visionattn-train`; this file runs it in a clone.
"""
import sys

from visionattn.cli import run

if __name__ == "__main__":
    sys.exit(run("train"))
