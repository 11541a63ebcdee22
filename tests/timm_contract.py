"""pytest plugin: timm's own model tests (``tests/test_models.py`` of the timm repository, at the
installed timm's version) over the models visionattn registers with timm.

    git clone https://github.com/huggingface/pytorch-image-models TIMM_SRC   # checkout the installed version
    PYTHONPATH=tests python -m pytest -p timm_contract -p no:xdist -p no:cacheprovider \\
        TIMM_SRC/tests/test_models.py [-k "fx or torchscript"]

``import visionattn`` runs before timm's test module lists its models, and only ours are kept.
``VISIONATTN_TIMM_MODELS`` (comma-separated shell patterns) picks which: by default the smallest
model of each family (the others differ only in widths and depths). ``TIMEOUT`` (seconds) is
timm's own per-test limit, 120 by default.

Every model is expected to pass all of timm's tests (forward, backward, default cfg, features,
``torch.fx`` forward/backward, TorchScript); :data:`UNSUPPORTED` lists what does not, with the reason,
the way timm's test file lists its own exclusions.
"""
import fnmatch
import os

import visionattn  # noqa: F401  (registers our models with timm before timm's tests list them)
from visionattn.factory import _our_timm_models

DEFAULT_MODELS = "biformer_tiny,ffnet_1,vit_small_patch16_224_*"

# test function name pattern -> {model pattern: reason}; empty while every model passes everything
UNSUPPORTED = {}

_TIMM_MARKERS = ("base", "cfg", "torchscript", "features", "fxforward", "fxbackward")


def selected_models():
    patterns = [p.strip() for p in os.environ.get("VISIONATTN_TIMM_MODELS", DEFAULT_MODELS).split(",") if p.strip()]
    return {n for n in _our_timm_models() if any(fnmatch.fnmatch(n, p) for p in patterns)}


def pytest_configure(config):
    for marker in _TIMM_MARKERS:
        config.addinivalue_line("markers", f"{marker}: timm's test marker")


def _unsupported(test: str, model: str):
    for test_pattern, models in UNSUPPORTED.items():
        if fnmatch.fnmatch(test, test_pattern):
            for model_pattern, reason in models.items():
                if fnmatch.fnmatch(model, model_pattern):
                    return reason
    return None


def pytest_collection_modifyitems(config, items):
    import pytest

    ours = selected_models()
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        model = callspec.params.get("model_name") if callspec else None
        if model not in ours:
            drop.append(item)
            continue
        reason = _unsupported(item.originalname, model)
        if reason:
            item.add_marker(pytest.mark.skip(reason=f"unsupported: {reason}"))
        keep.append(item)
    items[:] = keep
    if drop:
        config.hook.pytest_deselected(items=drop)
