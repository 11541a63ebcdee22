"""Console-script entry points (setup.cfg ``[options.entry_points]``): one function per program."""
from . import run


def train() -> int:
    return run("train")


def test() -> int:
    return run("test")


def zoo() -> int:
    return run("zoo")


def benchmark() -> int:
    return run("benchmark")


def convert_checkpoint() -> int:
    return run("convert_checkpoint")


def infer_stereo() -> int:
    return run("infer_stereo")


def infer_restore() -> int:
    return run("infer_restore")


def infer_lidar() -> int:
    return run("infer_lidar")
