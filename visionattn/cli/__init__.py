"""The command-line programs of visionattn.

Each module here has ``main(argv=None)``. They are installed as console scripts (setup.cfg, entry
points in :mod:`visionattn.cli.console`: ``visionattn-train``, ``visionattn-test``,
``visionattn-zoo``, ``visionattn-benchmark``, ``visionattn-convert``, ``visionattn-infer-stereo``,
``visionattn-infer-restore``, ``visionattn-infer-lidar``), and a clone's ``tools/<name>.py`` run the same modules through
:func:`run`.
"""
from importlib import import_module


def run(name: str) -> int:
    """Run ``visionattn.cli.<name>.main()`` on ``sys.argv``; an int result is the exit status, else 0."""
    result = import_module(f"{__name__}.{name}").main()
    return result if isinstance(result, int) else 0
