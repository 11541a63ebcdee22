"""Every registered network passes the same checks, timm ``test_models`` style.

Parametrised over ``visionattn.list_models()``, so a family's models are picked up as soon as they
register. For each model:

- parameter count (built on the 'meta' device: free) equals ``tests/data/param_counts/<family>.yaml``
  (``model_name: count``; trainable and frozen ``nn.Parameter``s, buffers excluded, default
  constructor arguments). Every model must be listed there and every listed name must exist.
- forward at the default input size gives finite outputs (backbones: ``(B, num_classes)`` logits);
- the state dict loaded strictly into a freshly built model gives the same outputs;
- ``torch.export.export`` (non-strict) captures the model. We chose torch.export over
  ``torch.jit.trace`` because it traces with fake tensors (no compute, so it is cheap even for ViT-L),
  keeps the custom ops of our fast paths as single nodes through their fake/meta functions (which is
  exactly what must not regress), and is the path torch.compile/AOTInductor deployment uses, while
  jit.trace is in maintenance mode. For small models the exported program is also run and compared;
- backbones: ``features_only=True`` returns one NCHW map per ``feature_info`` entry with its
  channels and reduction (stride);
- backward in train mode: a finite gradient reaches every parameter.

CPU budget (the whole file ≤ 4 min on one core with ~35 models, ViT-L among them). Small models
(≤ ``BIG_PARAMS`` = 30M parameters) get every check on real tensors with their own init. Big
models are built with their parameters drawn quickly (N(0, 0.02) matrices, their own init is only
run on 'meta'), run one real forward (finite outputs) and the export; the checks that would need a
second build or a backward pass run on the 'meta' device (shapes, key sets and gradient flow
without arithmetic), relying on the family's small variants, which share the code, for the
numerics:
- round trip: a fresh model built on meta loads the state dict strictly (same keys and shapes);
- features_only: a meta feature extractor's outputs match ``feature_info``;
- backward: on a meta copy, a gradient reaches every parameter.
Task networks whose default input grid makes these checks slow on a CPU (LiDAR detectors: a
240 x 240 BEV map) declare ``register_network(..., smoke_kwargs=dict(...))``: constructor arguments
that shrink the input (e.g. the point-cloud range) without changing any layer; the checks below
build them with those, the parameter count uses the defaults.
Inputs: timm backbones use ``pretrained_cfg['input_size']`` (big ones ``min_input_size`` when the
family declares that timm cfg key), batch 2 (big: 1); task networks use ``example_inputs(batch)``
of ``register_network`` (meant for smoke tests: keep them small but valid), batch 1. The exported
program is run and compared for small models only.

A family that truly cannot pass a check declares it with a reason in
``tests/data/registry_exemptions/<family>.yaml`` as ``model_glob: {check: reason}``, where check is
``export``, ``features_only`` or ``backward`` (e.g. a parameter used only by a training loss).
"""
import contextlib
import fnmatch
import math
from pathlib import Path

import pytest
import torch
import yaml

import visionattn
from visionattn.registry import NETWORKS

DATA = Path(__file__).resolve().parents[1] / "data"
BIG_PARAMS = 30_000_000
MODELS = visionattn.list_models()
EXEMPTABLE = ("export", "features_only", "backward")


def _load_yamls(folder: Path) -> dict:
    merged = {}
    for path in sorted(folder.glob("*.yaml")):
        data = yaml.safe_load(path.read_text()) or {}
        assert isinstance(data, dict), f"{path} must be a mapping"
        for key, value in data.items():
            assert key not in merged, f"{key!r} is listed twice (again in {path})"
            merged[key] = value
    return merged


PARAM_COUNTS = _load_yamls(DATA / "param_counts")
EXEMPTIONS = _load_yamls(DATA / "registry_exemptions")


def exemption(name: str, check: str):
    """The reason ``name`` is exempt from ``check``, or None."""
    for pattern, checks in EXEMPTIONS.items():
        if fnmatch.fnmatch(name, pattern) and check in (checks or {}):
            return checks[check]
    return None


def test_exemptions_are_well_formed():
    for pattern, checks in EXEMPTIONS.items():
        assert isinstance(checks, dict) and checks, f"{pattern}: expected {{check: reason}}"
        for check, reason in checks.items():
            assert check in EXEMPTABLE, f"{pattern}: unknown check {check!r} (one of {EXEMPTABLE})"
            assert isinstance(reason, str) and len(reason.strip()) > 10, f"{pattern}: {check} needs a reason"


def test_param_count_table_names_exist():
    stale = sorted(set(PARAM_COUNTS) - set(MODELS))
    assert not stale, f"tests/data/param_counts lists unregistered models: {stale}"


@contextlib.contextmanager
def _params_on_meta():
    """Build modules with their parameters on 'meta' (their init then costs nothing) while buffers and
    other tensors, e.g. ``torch.linspace(...).tolist()`` for drop-path rates, stay real."""
    register = torch.nn.Module.register_parameter

    def on_meta(self, name, param):
        register(self, name, param)
        if param is not None and not param.is_meta:
            self._parameters[name] = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    torch.nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register


def build_meta(name: str, **kwargs) -> torch.nn.Module:
    """The model with every parameter and buffer on 'meta': cheap to build, runs shapes only."""
    try:
        with _params_on_meta():
            model = visionattn.create_model(name, **kwargs)
    except Exception:  # a constructor that needs real parameter values
        model = visionattn.create_model(name, **kwargs)
    return model.to("meta")


def build_cheap(name: str, **kwargs) -> torch.nn.Module:
    """The model with real buffers and quickly drawn parameters instead of its own init (big models):
    matrices N(0, 0.02), 1-D biases 0, other 1-D parameters (norm weights, scales) 1."""
    try:
        with _params_on_meta():
            model = visionattn.create_model(name, **kwargs)
    except Exception:
        return visionattn.create_model(name, **kwargs)
    real = {}
    for module in model.modules():
        for key, p in list(module._parameters.items()):
            if p is None or not p.is_meta:
                continue
            if id(p) not in real:  # tied parameters stay tied
                t = torch.empty(p.shape, dtype=p.dtype)
                if t.dim() >= 2:
                    t.normal_(0, 0.02)
                else:
                    t.fill_(0.0 if key.endswith("bias") else 1.0)
                real[id(p)] = torch.nn.Parameter(t, requires_grad=p.requires_grad)
            module._parameters[key] = real[id(p)]
    return model


def smoke_kwargs(name: str) -> dict:
    """Constructor arguments a task network declares for these checks (see the module docstring)."""
    return dict(NETWORKS[name].info.get("smoke_kwargs", {})) if name in NETWORKS else {}


def count_params(name: str) -> int:
    return sum(p.numel() for p in build_meta(name).parameters())


def _names():
    return MODELS or [pytest.param(None, marks=pytest.mark.skip(reason="no model registered yet"))]


@pytest.mark.parametrize("name", _names())
def test_param_count(name):
    assert name in PARAM_COUNTS, (f"add `{name}: {count_params(name)}` (checked against the paper) to "
                                  f"tests/data/param_counts/<family>.yaml")
    assert count_params(name) == PARAM_COUNTS[name]


# --- the heavier checks share one built model per name ------------------------------------------

def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    return []


class Case:
    """One model under test: the model, its inputs and its eval-mode output."""

    def __init__(self, name: str):
        self.name = name
        self.is_network = name in NETWORKS
        self.big = count_params(name) > BIG_PARAMS
        torch.manual_seed(0)
        kwargs = smoke_kwargs(name)
        self.model = (build_cheap(name, **kwargs) if self.big else visionattn.create_model(name, **kwargs)).eval()
        self.batch = 1 if (self.big or self.is_network) else 2
        torch.manual_seed(1)
        self.inputs = self._inputs()
        with torch.no_grad():
            self.output = self.model(*self.inputs)

    def _inputs(self):
        if self.is_network:
            make = NETWORKS[self.name].example_inputs
            assert make is not None, f"register_network({self.name!r}, example_inputs=...) is needed for tests"
            inputs = make(self.batch)
            return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
        cfg = self.model.pretrained_cfg
        size = cfg.get("min_input_size") if self.big and cfg.get("min_input_size") else cfg["input_size"]
        return (torch.randn(self.batch, *size),)

    def meta_inputs(self):
        return tuple(t.to("meta") if isinstance(t, torch.Tensor) else t for t in self.inputs)

    def run(self, model, inputs=None):
        with torch.no_grad():
            return model(*(self.inputs if inputs is None else inputs))


@pytest.fixture(scope="module", params=_names())
def case(request):
    return Case(request.param)


def _assert_same(a, b, what, atol=1e-5, rtol=1e-4):
    ta, tb = _tensors(a), _tensors(b)
    assert len(ta) == len(tb), f"{what}: {len(ta)} vs {len(tb)} output tensors"
    for x, y in zip(ta, tb):
        torch.testing.assert_close(y, x, atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


def test_forward(case):
    outs = _tensors(case.output)
    assert outs, f"{case.name} returned no tensor"
    for t in outs:
        if t.is_floating_point():
            assert torch.isfinite(t).all(), f"{case.name}: non-finite output"
    if not case.is_network:
        assert case.output.shape == (case.batch, case.model.num_classes)


def test_state_dict_round_trip(case):
    state = case.model.state_dict()
    if case.big:
        fresh = build_meta(case.name, **smoke_kwargs(case.name))
        fresh.load_state_dict(state, strict=True, assign=True)  # same keys and shapes
        assert all(not t.is_meta for t in fresh.state_dict().values())
        return
    torch.manual_seed(123)  # a different init, so equal outputs mean the weights really moved over
    fresh = visionattn.create_model(case.name, **smoke_kwargs(case.name)).eval()
    fresh.load_state_dict(state, strict=True)
    _assert_same(case.output, case.run(fresh), f"{case.name} after state_dict round trip", atol=1e-6, rtol=1e-5)


def test_export(case):
    reason = exemption(case.name, "export")
    if reason:
        pytest.skip(f"export exempt: {reason}")
    program = torch.export.export(case.model, case.inputs, strict=False)
    if not case.big:
        _assert_same(case.output, case.run(program.module()), f"{case.name} exported")


def test_features_only(case):
    if case.is_network:
        pytest.skip("task network: no timm features_only")
    reason = exemption(case.name, "features_only")
    if reason:
        pytest.skip(f"features_only exempt: {reason}")
    torch.manual_seed(0)
    if case.big:
        features, inputs = build_meta(case.name, features_only=True).eval(), case.meta_inputs()
    else:
        features, inputs = visionattn.create_model(case.name, features_only=True).eval(), case.inputs
    info = features.feature_info
    outs = case.run(features, inputs)
    assert isinstance(outs, (list, tuple)) and len(outs) == len(info.channels())
    h, w = case.inputs[0].shape[-2:]
    for out, chs, red in zip(outs, info.channels(), info.reduction()):
        assert out.dim() == 4 and out.shape[:2] == (case.batch, chs), f"{tuple(out.shape)} vs {chs} channels"
        assert out.shape[-2] in (h // red, math.ceil(h / red)) and out.shape[-1] in (w // red, math.ceil(w / red)), (
            f"{tuple(out.shape)} at reduction {red} of a {h}x{w} input")
        if not case.big:
            assert torch.isfinite(out).all()


def test_backward(case):
    """Last: train mode updates BatchNorm statistics of the shared model."""
    model, inputs = ((build_meta(case.name, **smoke_kwargs(case.name)), case.meta_inputs()) if case.big
                     else (case.model, case.inputs))
    model.train()
    try:
        out = model(*inputs)
        loss = sum(t.float().mean() for t in _tensors(out) if t.is_floating_point())
        loss.backward()
        params = dict(model.named_parameters())
        missing = [n for n, p in params.items() if p.requires_grad and p.grad is None]
        reason = exemption(case.name, "backward")
        if missing and not reason:
            pytest.fail(f"{case.name}: no gradient reaches {missing[:10]} ({len(missing)} of {len(params)})")
        if not case.big:
            bad = [n for n, p in params.items() if p.grad is not None and not torch.isfinite(p.grad).all()]
            assert not bad, f"{case.name}: non-finite gradients in {bad[:10]}"
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()
