"""Registry of the task networks that are not timm backbones (stereo, restoration, 3D).

timm backbones register with ``timm.models.register_model``; whole task networks register here
with :func:`register_network`. :func:`visionattn.create_model` looks in both.
"""
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Tuple


@dataclass(frozen=True)
class NetworkEntry:
    name: str
    builder: Callable
    family: str
    task: str
    # Inputs for smoke tests: a callable (batch_size) -> tuple of tensors the forward takes.
    example_inputs: Optional[Callable] = None
    # Extra info for users (paper table, notes).
    info: Dict = field(default_factory=dict)


NETWORKS: Dict[str, NetworkEntry] = {}


def register_network(name: str, *, family: str, task: str, example_inputs: Optional[Callable] = None,
                     **info) -> Callable:
    """Decorator registering ``builder(**kwargs) -> nn.Module`` under ``name``."""

    def wrap(builder: Callable) -> Callable:
        if name in NETWORKS:
            raise ValueError(f"network {name!r} is registered twice")
        NETWORKS[name] = NetworkEntry(name, builder, family, task, example_inputs, dict(info))
        return builder

    return wrap


def network_family(name: str) -> Optional[str]:
    entry = NETWORKS.get(name)
    return entry.family if entry else None


def registered_networks() -> Tuple[str, ...]:
    return tuple(sorted(NETWORKS))


def import_submodules(package: str) -> None:
    """Import every module of ``package`` so their registration decorators run.

    Families drop a file into a package and are picked up without editing a shared list.
    Modules whose name starts with ``_`` or ends with ``_mm`` (mmdet/mmseg glue needing extras)
    are skipped.
    """
    import importlib
    import pkgutil

    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.startswith("_") and not info.name.endswith("_mm"):
            importlib.import_module(f"{package}.{info.name}")
