"""Where the data files of visionattn are: the model-zoo manifest (``model_zoo/``) and the configs.

A clone keeps them at the top of the repository (``configs/``, ``model_zoo/``). A wheel ships
copies inside the package as ``visionattn/.mim/configs`` and ``visionattn/.mim/model_zoo`` (the
layout OpenMMLab packages use, so ``mim`` finds them too). :func:`data_dir` returns whichever this
installation has, so ``visionattn-train configs/biformer_s.py`` works from any directory.
"""
from pathlib import Path
from typing import Union

_PACKAGE = Path(__file__).resolve().parent
DATA_DIRS = ("configs", "model_zoo")


def data_dir(name: str) -> Path:
    """The folder ``name`` ('configs' or 'model_zoo'): the copy shipped in the package
    (``visionattn/.mim/<name>``) if there is one, else the one at the top of the checkout."""
    if name not in DATA_DIRS:
        raise ValueError(f"unknown data folder {name!r}; visionattn ships {DATA_DIRS}")
    for candidate in (_PACKAGE / ".mim" / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"visionattn's {name}/ folder is missing: neither {str(_PACKAGE / '.mim' / name)!r} (installed from a "
        f"wheel) nor {str(_PACKAGE.parent / name)!r} (a clone) exists. Reinstall visionattn (pip install .).")


def find_config(config: Union[str, Path]) -> Path:
    """A config file: ``config`` itself when it exists, else the same path inside the shipped configs.

    ``configs/biformer_s.py``, ``biformer_s.py``, ``biformer_s`` and ``classification/biformer_s.py``
    all name ``configs/classification/...`` files of the package when run outside the clone.
    """
    path = Path(config).expanduser()
    if path.is_file():
        return path
    root = data_dir("configs")
    parts = path.parts[1:] if path.parts and path.parts[0] == "configs" else path.parts
    relative = Path(*parts) if parts else path
    candidates = [root / relative, root / relative.with_suffix(".py")] if relative.suffix != ".py" else [root / relative]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"config file {str(config)!r} not found, neither from {str(Path.cwd())!r} nor in the shipped configs "
        f"{str(root)!r}. Give a path to a config file, or a name under configs/ (e.g. configs/biformer_s.py).")
