"""Writers of tiny datasets in the exact real on-disk formats, for tests and the demo.

Each module here registers one or more writers with :func:`register_sample_writer`;
``tools/make_samples.py`` runs them all into ``datasets/samples/<name>/``. Writers must be
deterministic (fixed seeds) and take seconds.
"""
import importlib
import pkgutil
from pathlib import Path
from typing import Callable, Dict, Iterable, Optional

# name -> fn(root: Path) writing the sample dataset into root
SAMPLE_WRITERS: Dict[str, Callable[[Path], None]] = {}


def register_sample_writer(name: str) -> Callable:
    def wrap(fn: Callable[[Path], None]) -> Callable[[Path], None]:
        if name in SAMPLE_WRITERS:
            raise ValueError(f"sample writer {name!r} is registered twice")
        SAMPLE_WRITERS[name] = fn
        return fn

    return wrap


def _discover() -> None:
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


def write_samples(root: Path, names: Optional[Iterable[str]] = None) -> Dict[str, Path]:
    """Write the sample datasets ``names`` (all when None) under ``root``; returns name -> folder."""
    _discover()
    names = sorted(SAMPLE_WRITERS) if names is None else list(names)
    unknown = [n for n in names if n not in SAMPLE_WRITERS]
    if unknown:
        raise ValueError(f"unknown sample datasets {unknown}; known: {sorted(SAMPLE_WRITERS)}")
    out = {}
    for name in names:
        folder = Path(root) / name
        folder.mkdir(parents=True, exist_ok=True)
        SAMPLE_WRITERS[name](folder)
        out[name] = folder
    return out
