"""Export a network to ONNX, a torch.export program or TorchScript, and check the file against PyTorch.

The program is visionattn/cli/export.py, installed as `visionattn-export`; this file runs it in a clone.
"""
import sys

from visionattn.cli import run

if __name__ == "__main__":
    sys.exit(run("export"))
