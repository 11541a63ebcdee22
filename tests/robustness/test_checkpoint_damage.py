"""Checkpoint damage x every family: a state dict in the library's own format with one key removed,
one extra key, one key renamed or one tensor of another shape (bare, in a ``state_dict``
container, or saved from a wrapper with a ``module.`` prefix), and files that hold no state dict.

``visionattn.hub.load_checkpoint`` (the path of ``create_model(name, checkpoint=...)``) must refuse
each with the library's own RuntimeError/ValueError that names the damaged key (both shapes for a
shape mismatch): not taken for the official release format, not torch's ``load_state_dict``
message. The undamaged file must load. One tiny network per family, built once.
"""
import functools
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from library_errors import expect_library_error  # noqa: E402
from test_network_inputs import tiny  # noqa: E402

import visionattn  # noqa: E402
from visionattn import hub  # noqa: E402
from visionattn.factory import model_family  # noqa: E402

# One network per family (every converter registered with visionattn.registry.CONVERTERS).
FAMILY_MODELS = {
    "biformer": "biformer_tiny", "ffnet": "ffnet_1", "gqa_vit": "vit_small_patch16_224_gqa",
    "matchstereo": "matchstereo_tiny", "restore_rwkv": "restore_rwkv_light", "restoreformer": "restoreformer",
    "scatterformer": "scatterformer_kitti",
}
CHECKPOINT_ERRORS = (RuntimeError, ValueError)


@functools.lru_cache(maxsize=None)
def network(family: str):
    torch.manual_seed(0)
    name = FAMILY_MODELS[family]
    return visionattn.create_model(name, **tiny(name))


def _victim(state: dict) -> str:
    """A weight in the middle of the network (not one a converter fills in when a file lacks it)."""
    keys = [k for k, v in state.items() if k.endswith(".weight") and v.dim() >= 2]
    return keys[len(keys) // 2]


def _removed(sd, key):
    return {k: v for k, v in sd.items() if k != key}


def _renamed(sd, key):
    return {(key.replace(".weight", ".wieght") if k == key else k): v for k, v in sd.items()}


def _reshaped(sd, key):
    out = dict(sd)
    out[key] = torch.zeros(*(s + 1 for s in sd[key].shape))
    return out


DAMAGES = {
    "one key removed": (lambda sd, key: _removed(sd, key), lambda key: [key]),
    "one extra key": (lambda sd, key: {**sd, "extra_layer.weight": torch.zeros(3)}, lambda key: ["extra_layer.weight"]),
    "one key renamed": (_renamed, lambda key: [key, key.replace(".weight", ".wieght")]),
    "one tensor of another shape": (_reshaped, lambda key: [key]),
    "one key removed, in a state_dict container": (lambda sd, key: {"state_dict": _removed(sd, key), "epoch": 3},
                                                   lambda key: [key]),
    "one key removed, module. prefix": (lambda sd, key: {f"module.{k}": v for k, v in _removed(sd, key).items()},
                                        lambda key: [key]),
    "one tensor of another shape, module. prefix": (lambda sd, key: {f"module.{k}": v for k, v in _reshaped(sd, key).items()},
                                                    lambda key: [key]),
}
HOLDS_NOTHING = {
    "empty dict": {},
    "no tensors": {"epoch": 3, "config": {"lr": 0.1}},
    "an optimizer state only": {"optimizer": {"state": {}, "param_groups": []}},
}
CASES = [(f, d) for f in FAMILY_MODELS for d in DAMAGES] + [(f, h) for f in FAMILY_MODELS for h in HOLDS_NOTHING]


def test_every_converter_is_covered():
    from visionattn.registry import CONVERTERS

    assert set(CONVERTERS) <= set(FAMILY_MODELS), f"add a network for {set(CONVERTERS) - set(FAMILY_MODELS)}"
    for family, name in FAMILY_MODELS.items():
        assert model_family(name).endswith(family) or family == "gqa_vit"


@pytest.mark.parametrize("family", FAMILY_MODELS)
def test_intact_checkpoint_loads(family):
    model = network(family)
    fresh = visionattn.create_model(FAMILY_MODELS[family], **tiny(FAMILY_MODELS[family]))
    hub.load_checkpoint(fresh, {"state_dict": model.state_dict()}, family=family)
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


@pytest.mark.parametrize("family, damage", CASES, ids=[f"{i + 1}/{len(CASES)}-{f}-{d}" for i, (f, d) in enumerate(CASES)])
def test_damaged_checkpoint_is_named(family, damage):
    model = network(family)
    state = model.state_dict()
    if damage in HOLDS_NOTHING:
        checkpoint, named = HOLDS_NOTHING[damage], []
    else:
        key = _victim(state)
        make, names = DAMAGES[damage]
        checkpoint, named = make(state, key), names(key)
    err = expect_library_error(lambda: hub.load_checkpoint(model, checkpoint, family=family), CHECKPOINT_ERRORS)
    message = str(err)
    for key in named:
        assert key in message, f"the message does not name {key!r}: {message[:600]}"
    if "shape" in damage:
        shape = tuple(state[named[0]].shape)
        assert str(shape) in message and str(tuple(s + 1 for s in shape)) in message, \
            f"the message does not give both shapes: {message[:600]}"
    assert "size mismatch for" not in message, "torch's load_state_dict message instead of the library's"


def test_case_count():
    print(f"\nrobustness: {len(CASES)} checkpoint-damage cases over {len(FAMILY_MODELS)} families")
    assert len(CASES) == len(FAMILY_MODELS) * (len(DAMAGES) + len(HOLDS_NOTHING))
