"""Model zoo command line: list entries, download/verify/pin weights, regenerate model_zoo/README.md.

The program is visionattn/cli/zoo.py, installed as `visionattn-zoo`; this file runs it in a clone.
"""
import sys

from visionattn.cli import run

if __name__ == "__main__":
    sys.exit(run("zoo"))
