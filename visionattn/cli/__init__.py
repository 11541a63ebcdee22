"""The command-line programs of visionattn.

Each module here has ``main(argv=None)``. They are installed as console scripts (setup.cfg:
``visionattn-train``, ``visionattn-test``, ``visionattn-zoo``, ``visionattn-benchmark``,
``visionattn-convert``, ``visionattn-infer-stereo``, ``visionattn-infer-restore``), and a clone's
``tools/<name>.py`` are thin wrappers of the same modules. The functions below are the console
entry points: they run a module's ``main`` and turn its result into the exit status.
"""
from importlib import import_module


def run(name: str) -> int:
    """Run ``visionattn.cli.<name>.main()`` on ``sys.argv``; an int result is the exit status, else 0."""
    result = import_module(f"{__name__}.{name}").main()
    return result if isinstance(result, int) else 0


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
