"""One factory for every network: timm backbones and task networks alike."""
import difflib
import fnmatch
import os
from typing import List, Optional

import timm
import torch.nn as nn

from . import hub
from .registry import NETWORKS


def _our_timm_models() -> List[str]:
    """Names of the timm models that visionattn registered (their entrypoints live in our package)."""
    from timm.models._registry import _model_entrypoints

    return sorted(n for n, fn in _model_entrypoints.items() if fn.__module__.startswith("visionattn."))


def list_models(pattern: str = "*") -> List[str]:
    """Names of the networks visionattn provides (backbones and task networks), sorted.

    ``pattern`` is a shell-style wildcard, e.g. ``'biformer_*'``.
    """
    names = set(_our_timm_models()) | NETWORKS.names()
    return sorted(n for n in names if fnmatch.fnmatch(n, pattern))


def model_family(name: str) -> str:
    """The family a network belongs to (``'biformer'``, ``'matchstereo'``...), used to pick a converter."""
    if name in NETWORKS:
        return NETWORKS[name].family
    from timm.models._registry import _model_to_module

    return _model_to_module.get(name, name)


_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".pth.tar", ".tar", ".ckpt", ".bin", ".safetensors", ".pkl")


def _check_name(name, checkpoint) -> None:
    """A model name, not a path or another object: the mistakes timm answers with an AttributeError or
    an 'Invalid pretrained tag' get a sentence that says what to pass instead."""
    if isinstance(name, (str, bytes)) and not isinstance(name, bytes):
        looks_like_file = name.lower().endswith(_CHECKPOINT_SUFFIXES) or "/" in name or "\\" in name or \
            name.startswith(("http://", "https://", "~", "."))
        if looks_like_file and not (name in NETWORKS or hub.has_entry(name)):
            raise ValueError(f"create_model: {name!r} looks like a checkpoint path or URL, not a model name; pass "
                             f"the architecture as the name and the file as checkpoint=, e.g. "
                             f"create_model('ffnet_1', checkpoint={name!r}) (`visionattn.list_models()` lists names)")
        if not name.strip():
            raise ValueError("create_model: the model name is empty; `visionattn.list_models()` lists the names")
        if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
            raise TypeError(f"create_model: checkpoint must be a path or URL, got {type(checkpoint).__name__}")
        return
    if isinstance(name, os.PathLike):
        raise TypeError(f"create_model: got a path ({os.fspath(name)!r}) as the model name; pass the architecture "
                        f"as the name and the file as checkpoint=")
    raise TypeError(f"create_model: the model name must be a string such as 'ffnet_1', got {name!r} "
                    f"({type(name).__name__}); `visionattn.list_models()` lists the names")


def _unknown(name: str) -> ValueError:
    candidates = list_models() + [n for n in timm.list_models() if n not in NETWORKS]
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return ValueError(f"Unknown model {name!r}.{hint} `visionattn.list_models()` lists every model.")


# kwargs that turn a timm model into a feature extractor whose state dict is a subset of the full one
_FEATURE_KWARGS = ("features_only", "out_indices", "feature_cls", "output_stride", "feature_cfg")


def create_model(name: str, pretrained: bool = False, checkpoint: Optional[str] = None, **kwargs) -> nn.Module:
    """Build the network ``name``.

    Args:
        name: a name from :func:`list_models`, a model-zoo entry name (``visionattn-zoo list``), or
            any timm model name.
        pretrained: load the model-zoo weights of ``name`` (downloaded once, SHA-256 checked or
            pinned, cached). visionattn's timm backbones go through ``timm.create_model(...,
            pretrained=True)``, which reads the same zoo entry, so both give the same weights. For
            timm models the zoo has no entry for, timm's own pretrained weights.
        checkpoint: a local path or http(s) URL of weights, in visionattn's format or in the
            family's official release format (detected and converted). Loaded strictly.
        **kwargs: passed to the model's constructor (``num_classes``, ``features_only``...).
    """
    _check_name(name, checkpoint)
    if pretrained and checkpoint is not None:
        raise ValueError("pass either pretrained=True or checkpoint=..., not both")
    entry = None
    if pretrained and hub.has_entry(name):
        entry = hub.get_entry(name)
        kwargs = {**entry.kwargs, **kwargs}
        name = entry.model
        tag = _timm_zoo_tag(entry)
        if tag is not None:  # one path: timm's pretrained loader, which reads the same zoo entry
            return timm.create_model(name, pretrained=True, pretrained_cfg=tag, **kwargs)
    elif name not in NETWORKS and not timm.is_model(name):
        raise _unknown(name)
    source = entry if entry is not None else checkpoint
    if name in NETWORKS:
        if pretrained and entry is None:
            raise ValueError(f"the model zoo has no weights for {name!r} (`visionattn-zoo list`); "
                             f"pass checkpoint=PATH_OR_URL to load your own")
        model = NETWORKS[name].builder(**kwargs)
        if source is not None:
            _load(model, source, model_family(name))
        return model
    if source is None:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    full_kwargs = {k: v for k, v in kwargs.items() if k not in _FEATURE_KWARGS}
    model = timm.create_model(name, pretrained=False, **full_kwargs)
    _load(model, source, model_family(name))
    if len(full_kwargs) == len(kwargs):
        return model
    # features_only: the weights were checked against the full model, then copied into the extractor
    features = timm.create_model(name, pretrained=False, **kwargs)
    hub.copy_into_features(features, model)
    return features


def _timm_zoo_tag(entry: "hub.ZooEntry") -> Optional[str]:
    """The timm pretrained tag that names ``entry`` (``biformer_small.in1k`` -> ``'in1k'``), when the
    architecture is one of ours and timm knows the tag: timm's loader then reads the entry itself."""
    from timm.models import get_pretrained_cfg

    prefix = entry.model + "."
    if not entry.name.startswith(prefix) or entry.model not in _our_timm_models():
        return None
    return entry.name[len(prefix):] if get_pretrained_cfg(entry.name) is not None else None


def _load(model: nn.Module, source, family: str) -> None:
    if isinstance(source, hub.ZooEntry):
        hub.load_pretrained(model, source)
    else:
        hub.load_checkpoint(model, source, family=family)
