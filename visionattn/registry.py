"""Every registry of visionattn, in one place at the bottom of the import layers.

- mmengine registries (children of mmengine's roots, scope ``visionattn``): configs set
  ``default_scope = 'visionattn'``; ``dict(type='ImageClassifier', ...)`` then resolves here first
  and falls back to mmengine's own (optimisers, schedulers, hooks, runners).
- ``LOSSES`` and ``DEGRADATIONS``: mmengine registries of our own (no mmengine root has them).
- ``FUNCTIONS`` holds the collate functions (``collate_fn=dict(type='restoration_collate')``).
- ``NETWORKS``: whole task networks (stereo, restoration, 3D) that are not timm backbones;
  :func:`visionattn.create_model` looks here and in timm.
- ``CONVERTERS``: per family, ``fn(checkpoint, model, **kwargs) -> state_dict`` turning an
  official release into our keys.

Modules that need an optional extra (spconv, mmdet) are declared with :func:`lazy`: their names are
listed without importing them, and building one imports the module, whose
:func:`visionattn.extras.require_extra` call says which extra to install when it is missing.
"""
import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, Optional

from mmengine import registry as mm
from mmengine.registry import Registry as _MMRegistry

# ---------------------------------------------------------------------------------------------
# Lazily imported modules (those needing an optional extra)

# module path -> the extra it needs (the import name: 'spconv', 'mmdet')
LAZY_MODULES: Dict[str, str] = {}
# (registry name, registered name) -> module path
_LAZY_NAMES: Dict[tuple, str] = {}


def lazy(module: str, *, extra: str, **names: Iterable[str]) -> None:
    """Declare that ``module`` needs the optional ``extra`` and registers ``names`` when imported.

    ``names`` maps a registry to the names the module registers there: ``networks=[...]`` for
    :data:`NETWORKS`, ``models=[...]``, ``datasets=[...]``, ``metrics=[...]``... for the
    mmengine registries (lower-case of their attribute here). The names are listed at once; the
    module is imported when one of them is built (or by :func:`import_lazy`).
    """
    LAZY_MODULES[module] = extra
    for registry, items in names.items():
        for item in items:
            _LAZY_NAMES[(registry.lower(), item)] = module


def lazy_names(registry: str) -> Dict[str, str]:
    """Names declared lazily for ``registry`` (e.g. ``'networks'``), mapped to their module."""
    return {name: mod for (reg, name), mod in _LAZY_NAMES.items() if reg == registry}


def import_lazy(registry: str, name: str) -> bool:
    """Import the module declared to register ``name`` in ``registry``; False if none is declared.

    A missing extra raises the module's own ``require_extra`` ImportError (which names the extra).
    """
    module = _LAZY_NAMES.get((registry, name))
    if module is None:
        return False
    importlib.import_module(module)
    return True


def import_submodules(package: str) -> None:
    """Import every module of ``package`` so that their registration decorators run.

    Families drop a file into a package and are picked up without editing a shared list. Private
    modules (``_name``) and those declared with :func:`lazy` are skipped.
    """
    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(pkg.__path__):
        module = f"{package}.{info.name}"
        if not info.name.startswith("_") and module not in LAZY_MODULES:
            importlib.import_module(module)


# ---------------------------------------------------------------------------------------------
# mmengine registries

class Registry(_MMRegistry):
    """An mmengine registry that imports a lazily declared module when one of its names is asked for."""

    def __init__(self, name: str, *args, key: Optional[str] = None, **kwargs):
        super().__init__(name, *args, **kwargs)
        self._lazy_key = key or name

    def get(self, key):
        if isinstance(key, str) and key.split(".")[-1] not in self._module_dict:
            import_lazy(self._lazy_key, key.split(".")[-1])
        return super().get(key)


_LOCATIONS = ["visionattn.engine", "visionattn.datasets", "visionattn.evaluation", "visionattn.models"]


def _child(name: str, parent, key: str, locations=None) -> Registry:
    return Registry(name, parent=parent, scope="visionattn", locations=locations or [], key=key)


MODELS = _child("model", mm.MODELS, "models", _LOCATIONS)
DATASETS = _child("dataset", mm.DATASETS, "datasets", _LOCATIONS)
TRANSFORMS = _child("transform", mm.TRANSFORMS, "transforms", _LOCATIONS)
METRICS = _child("metric", mm.METRICS, "metrics", _LOCATIONS)
HOOKS = _child("hook", mm.HOOKS, "hooks", _LOCATIONS)
FUNCTIONS = _child("function", mm.FUNCTIONS, "functions", _LOCATIONS)
DATA_SAMPLERS = _child("data sampler", mm.DATA_SAMPLERS, "data_samplers", _LOCATIONS)
OPTIM_WRAPPER_CONSTRUCTORS = _child("optimizer wrapper constructor", mm.OPTIM_WRAPPER_CONSTRUCTORS,
                                    "optim_wrapper_constructors", _LOCATIONS)
VISBACKENDS = _child("vis_backend", mm.VISBACKENDS, "visbackends", _LOCATIONS)
# Runner plumbing: nothing of ours is registered; children so that lookups in scope 'visionattn' succeed.
RUNNERS = _child("runner", mm.RUNNERS, "runners")
RUNNER_CONSTRUCTORS = _child("runner constructor", mm.RUNNER_CONSTRUCTORS, "runner_constructors")
LOOPS = _child("loop", mm.LOOPS, "loops")
MODEL_WRAPPERS = _child("model_wrapper", mm.MODEL_WRAPPERS, "model_wrappers")
WEIGHT_INITIALIZERS = _child("weight initializer", mm.WEIGHT_INITIALIZERS, "weight_initializers")
OPTIMIZERS = _child("optimizer", mm.OPTIMIZERS, "optimizers")
OPTIM_WRAPPERS = _child("optim_wrapper", mm.OPTIM_WRAPPERS, "optim_wrappers")
PARAM_SCHEDULERS = _child("parameter scheduler", mm.PARAM_SCHEDULERS, "param_schedulers")
EVALUATOR = _child("evaluator", mm.EVALUATOR, "evaluator")
TASK_UTILS = _child("task util", mm.TASK_UTILS, "task_utils")
VISUALIZERS = _child("visualizer", mm.VISUALIZERS, "visualizers")
LOG_PROCESSORS = _child("log_processor", mm.LOG_PROCESSORS, "log_processors")

# Our own: loss modules (``LOSSES.build(dict(type='L1Loss'))``) and image degradations.
LOSSES = Registry("loss", scope="visionattn", locations=["visionattn.engine"], key="losses")
DEGRADATIONS = Registry("degradation", scope="visionattn", locations=["visionattn.datasets"], key="degradations")


# ---------------------------------------------------------------------------------------------
# Networks that are not timm backbones

@dataclass(frozen=True)
class NetworkEntry:
    name: str
    builder: Callable
    family: str
    task: str
    # Inputs for smoke tests and the benchmark: a callable (batch_size) -> tuple of tensors.
    example_inputs: Optional[Callable] = None
    # Extra info for users (paper table, notes).
    info: Dict = field(default_factory=dict)


class _Networks(dict):
    """name -> :class:`NetworkEntry`; a lazily declared name imports its module on first access."""

    def __missing__(self, name):
        if import_lazy("networks", name) and dict.__contains__(self, name):
            return dict.__getitem__(self, name)
        raise KeyError(name)

    def __contains__(self, name):
        return dict.__contains__(self, name) or name in lazy_names("networks")

    def get(self, name, default=None):
        return self[name] if name in self else default

    def names(self):
        """Every network name, the lazily declared ones included (without importing them)."""
        return set(dict.keys(self)) | set(lazy_names("networks"))


NETWORKS: Dict[str, NetworkEntry] = _Networks()


def register_network(name: str, *, family: str, task: str, example_inputs: Optional[Callable] = None,
                     **info) -> Callable:
    """Decorator registering ``builder(**kwargs) -> nn.Module`` under ``name``."""

    def wrap(builder: Callable) -> Callable:
        if dict.__contains__(NETWORKS, name):
            raise ValueError(f"network {name!r} is registered twice")
        NETWORKS[name] = NetworkEntry(name, builder, family, task, example_inputs, dict(info))
        return builder

    return wrap


# ---------------------------------------------------------------------------------------------
# Checkpoint converters

CONVERTERS: Dict[str, Callable] = {}


def register_converter(family: str) -> Callable:
    """Decorator registering ``fn(checkpoint, model, **kwargs) -> state_dict`` for ``family``.

    ``fn`` receives the raw checkpoint mapping (whatever container the official release uses) and
    the freshly built model, and returns a state dict with exactly the model's keys.
    """

    def wrap(fn: Callable) -> Callable:
        if family in CONVERTERS:
            raise ValueError(f"converter for {family!r} is registered twice")
        CONVERTERS[family] = fn
        return fn

    return wrap
