"""3-D boxes of one LiDAR frame (KITTI label file + BEV picture) with a visionattn LiDAR detector.

The program is visionattn/cli/infer_lidar.py, installed as `visionattn-infer-lidar`; this file runs it in a clone.
"""
import sys

from visionattn.cli import run

if __name__ == "__main__":
    sys.exit(run("infer_lidar"))
