"""Model zoo: manifest lookup, verified downloads with a cache, and official-checkpoint conversion.

Families register a converter with :func:`register_converter`; the manifest lives in
``model_zoo/<family>.yaml``. (Download/cache/manifest: see the functions below.)
"""
from collections.abc import Mapping
from pathlib import Path
from typing import Callable, Dict, Optional, Union

import torch
import torch.nn as nn

# family -> fn(checkpoint: Mapping, model: nn.Module, **kwargs) -> state_dict with our keys
CONVERTERS: Dict[str, Callable] = {}

# Containers official releases and mmengine wrap a state dict in, most specific first.
_CONTAINER_KEYS = ("state_dict", "model", "model_state", "params")


def register_converter(family: str) -> Callable:
    """Decorator registering ``fn(checkpoint, model, **kwargs) -> state_dict`` for ``family``.

    ``checkpoint`` is the object as loaded from the official file (container included), so the
    converter can pick e.g. the EMA weights; the result must have exactly our model's keys.
    """

    def wrap(fn: Callable) -> Callable:
        CONVERTERS[family] = fn
        return fn

    return wrap


def read_checkpoint(source: Union[str, Path], map_location="cpu") -> Mapping:
    """Load a checkpoint object from a local path or an http(s) URL (downloaded to the cache)."""
    source = str(source)
    if source.startswith(("http://", "https://")):
        path = download(source)
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint file {str(path)!r} does not exist")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for truncated / non-pickle files
        raise RuntimeError(
            f"could not read checkpoint {str(path)!r}: it is corrupt, truncated or not a PyTorch "
            f"checkpoint ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        ) from err
    if not isinstance(obj, Mapping):
        raise RuntimeError(f"checkpoint {str(path)!r} holds a {type(obj).__name__}, not a state dict")
    return obj


def extract_state_dict(checkpoint: Mapping) -> Dict[str, torch.Tensor]:
    """The tensor dict inside a checkpoint's usual containers (``state_dict``, ``model``...)."""
    for key in _CONTAINER_KEYS:
        inner = checkpoint.get(key)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return dict(inner)
    if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return dict(checkpoint)
    raise RuntimeError(f"no state dict found in checkpoint (top-level keys: {sorted(checkpoint)[:10]})")


def _strip_prefix(state_dict: Dict[str, torch.Tensor], model_keys) -> Optional[Dict[str, torch.Tensor]]:
    """Our own checkpoints, possibly saved from a task wrapper (``backbone.``/``net.``/``module.``)."""
    if set(state_dict) == set(model_keys):
        return state_dict
    for prefix in ("module.", "backbone.", "net.", "model.", "ema.", "module.backbone.", "module.net."):
        stripped = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if stripped and set(stripped) == set(model_keys):
            return stripped
    return None


def convert_checkpoint(checkpoint: Mapping, model: nn.Module, family: Optional[str] = None,
                       **kwargs) -> Dict[str, torch.Tensor]:
    """Return a state dict with ``model``'s keys from our format or the family's official one."""
    model_keys = model.state_dict().keys()
    ours = _strip_prefix(extract_state_dict(checkpoint), model_keys) if not kwargs else None
    if ours is not None:
        return ours
    if family not in CONVERTERS:
        raise RuntimeError(
            f"checkpoint keys do not match the model and no converter is registered for family "
            f"{family!r} (registered: {sorted(CONVERTERS)})"
        )
    return CONVERTERS[family](checkpoint, model, **kwargs)


def load_checkpoint(model: nn.Module, source: Union[str, Path, Mapping], family: Optional[str] = None,
                    strict: bool = True, **kwargs) -> nn.Module:
    """Load weights from a path, URL or already-loaded checkpoint into ``model`` (strict by default)."""
    checkpoint = source if isinstance(source, Mapping) else read_checkpoint(source)
    state_dict = convert_checkpoint(checkpoint, model, family, **kwargs)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if strict and (missing or unexpected):
        raise RuntimeError(
            f"checkpoint does not fit {type(model).__name__}: missing keys {missing[:8]}"
            f"{'...' if len(missing) > 8 else ''}, unexpected keys {unexpected[:8]}"
            f"{'...' if len(unexpected) > 8 else ''}"
        )
    return model


# --- model zoo manifest and downloads ---------------------------------------------------------

def has_entry(name: str) -> bool:
    """Whether the model zoo has weights for ``name``."""
    return False


def load_pretrained(model: nn.Module, name: str) -> nn.Module:
    """Download (verified, cached) and load the zoo weights of ``name`` into ``model``."""
    raise RuntimeError(f"the model zoo has no weights for {name!r}")


def download(url: str, sha256: Optional[str] = None, progress: bool = True) -> Path:
    """Download ``url`` into the cache (verified by SHA-256 when given) and return the local path."""
    raise NotImplementedError
