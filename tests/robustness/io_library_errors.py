"""Shared check of the I/O robustness tests: an error is the library's own when its innermost
traceback frame is a ``raise`` statement in a visionattn module (not a torch/numpy/PIL/pickle frame,
nor a visionattn line that merely calls into them) and its message names what it should."""
import linecache
import traceback
from pathlib import Path
from typing import Callable, Iterable, Tuple, Type

import visionattn

PACKAGE = Path(visionattn.__file__).resolve().parent


def raised_by_library(err: BaseException) -> Tuple[bool, str]:
    frames = list(traceback.walk_tb(err.__traceback__))
    if not frames:
        return False, "<no traceback>"
    frame, lineno = frames[-1]
    path = Path(frame.f_code.co_filename).resolve()
    where = f"{path}:{lineno}"
    if PACKAGE not in path.parents:
        return False, where
    lines = [linecache.getline(str(path), n).strip() for n in range(max(1, lineno - 6), lineno + 1)]
    return any(line.startswith("raise ") or line == "raise" for line in lines), where


def expect_library_error(call: Callable[[], object], names: Iterable[str] = (),
                         types: Tuple[Type[BaseException], ...] = (Exception,)) -> BaseException:
    """Run ``call``; fail unless it raises one of ``types`` from a visionattn ``raise`` whose message
    contains every string of ``names`` (e.g. the damaged file's name)."""
    try:
        call()
    except BaseException as err:  # noqa: B902 (inspected, never swallowed)
        ok, where = raised_by_library(err)
        message = str(err)
        assert isinstance(err, types), f"got {type(err).__name__} at {where}: {message[:300]}"
        assert ok, f"{type(err).__name__} escaped from {where} without the library's message: {message[:300]}"
        missing = [n for n in names if n not in message]
        assert not missing, f"the message does not name {missing}: {message[:400]}"
        return err
    raise AssertionError("no error: the damaged input was accepted")
