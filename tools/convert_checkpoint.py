"""Convert an official checkpoint file to visionattn's format (strict: every key must land).

The program is visionattn/cli/convert_checkpoint.py, installed as `visionattn-convert`; this file runs it in a clone.
"""
import sys

from visionattn.cli import run

if __name__ == "__main__":
    sys.exit(run("convert_checkpoint"))
