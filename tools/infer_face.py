"""Restore faces in photos with RestoreFormer / RestoreFormer++.

The program is visionattn/cli/infer_face.py, installed as `visionattn-infer-face`; this file runs it in a clone.
"""
import sys

from visionattn.cli import run

if __name__ == "__main__":
    sys.exit(run("infer_face"))
