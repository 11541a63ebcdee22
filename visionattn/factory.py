"""One factory for every network: timm backbones and task networks alike."""
import difflib
import fnmatch
from typing import List, Optional

import timm
import torch.nn as nn

from . import hub
from .models.registry import NETWORKS


def _our_timm_models() -> List[str]:
    """Names of the timm models that visionattn registered (their entrypoints live in our package)."""
    from timm.models._registry import _model_entrypoints

    return sorted(n for n, fn in _model_entrypoints.items() if fn.__module__.startswith("visionattn."))


def list_models(pattern: str = "*") -> List[str]:
    """Names of the networks visionattn provides (backbones and task networks), sorted.

    ``pattern`` is a shell-style wildcard, e.g. ``'biformer_*'``.
    """
    names = set(_our_timm_models()) | set(NETWORKS)
    return sorted(n for n in names if fnmatch.fnmatch(n, pattern))


def model_family(name: str) -> str:
    """The family a network belongs to (``'biformer'``, ``'matchstereo'``...), used to pick a converter."""
    if name in NETWORKS:
        return NETWORKS[name].family
    from timm.models._registry import _model_to_module

    return _model_to_module.get(name, name)


def _unknown(name: str) -> ValueError:
    candidates = list_models() + [n for n in timm.list_models() if n not in NETWORKS]
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return ValueError(f"Unknown model {name!r}.{hint} `visionattn.list_models()` lists every model.")


def create_model(name: str, pretrained: bool = False, checkpoint: Optional[str] = None, **kwargs) -> nn.Module:
    """Build the network ``name``.

    Args:
        name: a name from :func:`list_models` (or any timm model name).
        pretrained: load the model-zoo weights of ``name`` (downloaded once, SHA-256 checked, cached).
        checkpoint: a local path or http(s) URL of weights, in visionattn's format or in the
            family's official release format (detected and converted).
        **kwargs: passed to the model's constructor (``num_classes``, ``features_only``...).
    """
    if name in NETWORKS:
        model = NETWORKS[name].builder(**kwargs)
        if pretrained:
            hub.load_pretrained(model, name)
    elif timm.is_model(name):
        if pretrained and hub.has_entry(name):
            model = timm.create_model(name, pretrained=False, **kwargs)
            hub.load_pretrained(model, name)
        else:
            model = timm.create_model(name, pretrained=pretrained, **kwargs)
    else:
        raise _unknown(name)
    if checkpoint is not None:
        hub.load_checkpoint(model, checkpoint, family=model_family(name))
    return model
