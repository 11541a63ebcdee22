"""Pictures of BiFormer's region routing and MatchStereo's sampling windows.

The program is visionattn/cli/visualize_attention.py; this file runs it in a clone.
"""
import sys

from visionattn.cli import run

if __name__ == "__main__":
    sys.exit(run("visualize_attention"))
