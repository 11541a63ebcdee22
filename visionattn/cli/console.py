"""Console-script entry points (setup.cfg ``[options.entry_points]``: one function per program) and
the error handling every program shares.

A program's ``main(argv=None)`` is wrapped by :func:`cli_main`: a user error (a :class:`UsageError`,
a missing or unreadable file, a bad value: ``OSError``, ``ValueError``, ``LookupError``,
``RuntimeError``, ``ImportError`` of a missing extra, a refused pickle, a diverged training's
``FloatingPointError``) is printed as one line,
``<program>: error: <message>``, and ``main`` returns 2, the status argparse uses for bad
arguments. ``--debug`` anywhere on the command line, or ``VISIONATTN_DEBUG=1``, lets the exception
through with its traceback. Anything else (a bug) always shows its traceback.
"""
import argparse
import functools
import os
import pickle
import sys
from typing import Callable, List, Optional, Sequence

from . import run


class UsageError(Exception):
    """What the user asked for cannot be done as asked; the message says what to pass instead."""


# Exceptions whose messages the library words for the user (a file, a value, a missing extra).
USER_ERRORS = (UsageError, OSError, ValueError, LookupError, RuntimeError, ImportError, pickle.UnpicklingError,
               FloatingPointError)
DEBUG_FLAG = "--debug"


def debug_enabled(argv: Sequence[str] = ()) -> bool:
    """``--debug`` in ``argv`` or ``VISIONATTN_DEBUG`` set to 1/true/yes/on."""
    env = os.environ.get("VISIONATTN_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")
    return env or DEBUG_FLAG in argv


def one_line(err: BaseException) -> str:
    """The exception's message on one line (a KeyError's quotes dropped; the type when it has none)."""
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    text = " ".join(part.strip() for part in text.splitlines() if part.strip())
    return text or type(err).__name__


_SCRIPT_NAMES = {"convert_checkpoint": "visionattn-convert"}  # where setup.cfg shortens the name


def program_name(module: str) -> str:
    """``visionattn.cli.infer_stereo`` -> ``visionattn-infer-stereo`` (the console script's name)."""
    name = module.rsplit(".", 1)[-1]
    return _SCRIPT_NAMES.get(name, "visionattn-" + name.replace("_", "-"))


def cli_main(fn: Callable) -> Callable:
    """Wrap a program's ``main(argv)``: user errors become one line on stderr and the status 2; see
    the module docstring. ``--debug`` is taken out of ``argv`` before ``fn`` parses it."""
    prog = program_name(fn.__module__)

    @functools.wraps(fn)
    def main(argv: Optional[Sequence[str]] = None):
        args: List[str] = list(sys.argv[1:] if argv is None else argv)
        debug = debug_enabled(args)
        args = [a for a in args if a != DEBUG_FLAG]
        if debug:
            return fn(args)
        try:
            return fn(args)
        except USER_ERRORS as err:
            print(f"{prog}: error: {one_line(err)} ({DEBUG_FLAG} shows the traceback)", file=sys.stderr)
            return 2

    return main


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose errors (a missing argument, a bad choice) are one line, like every
    other user error of the programs, and exit with status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (--help shows the usage)\n")


def _cfg_option_action():
    from mmengine.config import DictAction

    class CfgOptions(DictAction):
        """mmengine's ``key=value`` parsing, refusing an item without ``=`` or with an empty key part."""

        def __call__(self, parser, namespace, values, option_string=None):
            for item in values or ():
                key, eq, _ = item.partition("=")
                if not eq:
                    parser.error(f"{option_string} {item!r} has no '=': write dotted.key=value")
                if not key or any(not part.strip() for part in key.split(".")):
                    parser.error(f"{option_string} key {key!r} is malformed (an empty part between dots): "
                                 f"write dotted.key=value")
            super().__call__(parser, namespace, values, option_string)

    return CfgOptions


def add_cfg_options(parser: argparse.ArgumentParser) -> None:
    """``--cfg-options k=v ...`` as mmengine parses it, with malformed items refused (exit 2)."""
    parser.add_argument("--cfg-options", nargs="+", action=_cfg_option_action(),
                        help="override config keys: dotted.key=value ...")


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


def infer_face() -> int:
    return run("infer_face")


def infer_lidar() -> int:
    return run("infer_lidar")
