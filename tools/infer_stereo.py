"""Disparity of a stereo pair with a visionattn stereo network.

The program is visionattn/cli/infer_stereo.py, installed as `visionattn-infer-stereo`; this file runs it in a clone.
"""
import sys

from visionattn.cli import run

if __name__ == "__main__":
    sys.exit(run("infer_stereo"))
