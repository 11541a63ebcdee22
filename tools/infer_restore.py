"""Restore a NIfTI volume or a 2-D image with a visionattn restoration model.

The program is visionattn/cli/infer_restore.py, installed as `visionattn-infer-restore`; this file runs it in a clone.
"""
import sys

from visionattn.cli import run

if __name__ == "__main__":
    sys.exit(run("infer_restore"))
