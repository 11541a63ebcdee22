"""What the robustness tests accept as "the library's own error".

An error passes when it is one of the expected types and was raised by a ``raise`` statement in a
visionattn module: the innermost traceback frame lies in the package and its line (or one of the
few lines above it, for a multi-line ``raise``) starts with ``raise``. An error that escapes from
torch, numpy or timm (the innermost frame is theirs, or a visionattn line that merely calls into
them) fails, and so does a call that raises nothing.
"""
import linecache
import traceback
from pathlib import Path
from typing import Callable, Iterable, Tuple, Type

import visionattn

PACKAGE = Path(visionattn.__file__).resolve().parent
INPUT_ERRORS: Tuple[Type[BaseException], ...] = (ValueError, TypeError)
ANY_ERROR: Tuple[Type[BaseException], ...] = (Exception,)  # readers: the file's name in the message is the check


def raised_by_library(err: BaseException) -> Tuple[bool, str]:
    """(whether ``err`` comes from a visionattn ``raise``, where it was raised)."""
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


def expect_library_error(call: Callable[[], object], types: Tuple[Type[BaseException], ...] = INPUT_ERRORS,
                         names: Iterable[str] = ()) -> BaseException:
    """Run ``call``; fail unless it raises one of ``types`` from a visionattn ``raise`` with a message
    that contains every string of ``names`` (e.g. the damaged file's path)."""
    try:
        call()
    except BaseException as err:  # noqa: B902 (everything is inspected, nothing swallowed silently)
        ok, where = raised_by_library(err)
        message = str(err)
        assert isinstance(err, types), (
            f"expected the library's {'/'.join(t.__name__ for t in types)}, got {type(err).__name__} raised at "
            f"{where}: {message[:300]}")
        assert ok, f"{type(err).__name__} escaped from {where} without the library's message: {message[:300]}"
        missing = [n for n in names if n not in message]
        assert not missing, f"the message does not name {missing}: {message[:400]}"
        assert len(message) > 20, f"the library's message is too short to name the problem: {message!r}"
        return err
    raise AssertionError("no error: the bad input was accepted")
