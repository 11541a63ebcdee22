"""From command-line options to a ready mmengine Runner; shared by tools/train.py, test.py, demo.py.

Task-agnostic: every task (classification, stereo, restoration...) goes through the same
config handling; the config's ``model`` decides what is trained.
"""
import difflib
import os
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional

import torch
from mmengine.config import Config
from mmengine.runner import Runner

from ..registry import FUNCTIONS
from .hooks.safe_checkpoint import latest_complete_checkpoint
from .safe_globals import allow_mmengine_checkpoints

LAUNCHERS = ("none", "pytorch", "slurm", "mpi")


def load_config(config: str, work_dir: Optional[str] = None, cfg_options: Optional[Dict] = None,
                resume: Optional[str] = None, amp: bool = False, launcher: str = "none") -> Config:
    """Read ``config`` and apply the CLI options.

    Args:
        work_dir: where logs/checkpoints go; default ``work_dirs/<config name>``.
        cfg_options: ``{'dotted.key': value}`` overrides (mmengine ``--cfg-options``).
        resume: ``'auto'`` resumes from the latest checkpoint of ``work_dir``; a path resumes from it.
        amp: mixed precision through mmengine's ``AmpOptimWrapper`` (needs CUDA).
        launcher: ``'none'`` or the distributed launcher (``'pytorch'`` for torchrun). Without
            CUDA, distributed runs use the gloo backend with CPU DDP, and a config's ``sync_bn``
            is dropped with a warning (torch's SyncBatchNorm needs GPUs).
    """
    path = Path(config)
    if not path.is_file():
        raise FileNotFoundError(f"config file {config!r} not found; configs live in configs/ (e.g. configs/demo.py)")
    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher must be one of {LAUNCHERS}, got {launcher!r}")
    cfg = Config.fromfile(str(path))
    if cfg_options:
        check_cfg_options(cfg, cfg_options)
        cfg.merge_from_dict(cfg_options)
    cfg.launcher = launcher
    cfg.work_dir = work_dir or cfg.get("work_dir") or str(Path("work_dirs") / path.stem)
    if resume and resume != "auto" and not Path(resume).is_file():
        raise FileNotFoundError(f"--resume {resume!r}: no such checkpoint file (--resume without a path resumes "
                                f"from the last complete checkpoint of the work dir)")
    if resume:
        cfg.resume = True
        # auto: the last *complete* checkpoint (a run killed mid-save leaves the previous one usable)
        cfg.load_from = latest_complete_checkpoint(cfg.work_dir) if resume == "auto" else resume
    if amp:
        if not torch.cuda.is_available():
            raise RuntimeError("--amp needs a CUDA GPU (mmengine's AmpOptimWrapper); run without --amp on CPU")
        if cfg.optim_wrapper.get("constructor") == "MultiOptimWrapperConstructor":  # one wrapper per optimiser
            for name, wrapper in cfg.optim_wrapper.items():
                if name != "constructor":
                    wrapper.type = "AmpOptimWrapper"
                    wrapper.setdefault("loss_scale", "dynamic")
        else:
            cfg.optim_wrapper.type = "AmpOptimWrapper"
            cfg.optim_wrapper.setdefault("loss_scale", "dynamic")
    if launcher != "none" and not torch.cuda.is_available():
        cfg.env_cfg = dict(cfg.get("env_cfg", {}), dist_cfg=dict(backend="gloo"))
        # CPU modules take DDP's device_ids=None (mmengine passes [LOCAL_RANK] otherwise)
        wrapper = dict(type="MMDistributedDataParallel", broadcast_buffers=False,
                       find_unused_parameters=cfg.get("find_unused_parameters", False))
        wrapper.update(cfg.get("model_wrapper_cfg") or {})
        cfg.model_wrapper_cfg = dict(wrapper, device_ids=None)
        if cfg.get("sync_bn"):
            # torch's SyncBatchNorm refuses CPU tensors in training
            warnings.warn(f"sync_bn={cfg.sync_bn!r} is ignored in this CPU (gloo) run: torch's SyncBatchNorm "
                          "runs on GPUs only, so each process keeps its own BatchNorm statistics")
            cfg.sync_bn = None
    return cfg


def config_keys(cfg: Any, prefix: str = "") -> Iterator[str]:
    """Every dotted key of a config (``model.network_kwargs.drop_path_rate``; list items by index,
    ``train_dataloader.dataset.pipeline.0.type``), parents before children."""
    items = cfg.items() if isinstance(cfg, Mapping) else enumerate(cfg) if isinstance(cfg, (list, tuple)) else ()
    for key, value in items:
        name = f"{prefix}{key}"
        yield name
        yield from config_keys(value, name + ".")


def check_cfg_options(cfg: Config, options: Mapping[str, Any]) -> None:
    """Refuse malformed ``--cfg-options`` keys (empty, or an empty part as in ``foo..bar``) with a
    ValueError, and warn for each key that matches nothing in ``cfg`` (mmengine adds it silently,
    so a typo would be ignored), naming the closest existing key."""
    existing = list(config_keys(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg))
    known = set(existing)
    for key in options:
        if not isinstance(key, str) or not key or any(not part.strip() for part in key.split(".")):
            raise ValueError(f"--cfg-options key {key!r} is malformed: it has an empty part; write "
                             f"dotted.key=value, e.g. train_dataloader.batch_size=32")
        if key not in known:
            parent = key.rpartition(".")[0]
            siblings = [k for k in existing if k.rpartition(".")[0] == parent] if parent in known else existing
            close = difflib.get_close_matches(key, siblings, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            warnings.warn(f"--cfg-options key {key!r} matches no key in the config, so it adds a new one{hint}",
                          stacklevel=2)


def _scope_collate_functions(cfg: Config) -> None:
    """mmengine's Runner looks ``collate_fn`` types up in its root FUNCTIONS registry, which does not
    search our child registry: name ours with their scope (``visionattn.restoration_collate``)."""
    for key in ("train_dataloader", "val_dataloader", "test_dataloader"):
        collate = (cfg.get(key) or {}).get("collate_fn")
        if isinstance(collate, dict) and collate.get("type") in FUNCTIONS.module_dict:
            collate["type"] = f"{FUNCTIONS.scope}.{collate['type']}"


_runs_built = 0  # Runners built by this process


def _name_the_experiment(cfg: Config) -> None:
    """mmengine names a run's logger, visualizer and message hub, instances shared by the whole
    process, after the config file and the second the run starts. A second run of the same config in
    the same process and second would take over the first run's instances, and with them its log and
    ``vis_data`` folders. Every run after a process's first gets a numbered name (``<config>-2``...)
    unless the config names its experiment."""
    global _runs_built
    _runs_built += 1
    if _runs_built > 1 and cfg.get("experiment_name") is None:
        stem = Path(cfg.filename).stem if cfg.filename else "run"
        cfg.experiment_name = f"{stem}-{_runs_built}"


def build_runner(cfg: Config) -> Runner:
    """The mmengine Runner of ``cfg``, with visionattn's modules registered."""
    from .. import datasets, evaluation  # noqa: F401  (register datasets, transforms, metrics)

    allow_mmengine_checkpoints()
    _scope_collate_functions(cfg)
    if cfg.get("launcher", "none") != "none" and not torch.cuda.is_available():
        # mmengine's init_dist calls torch.cuda.set_device; start the CPU process group ourselves
        import torch.distributed as dist

        if not dist.is_initialized():
            if "RANK" not in os.environ:
                raise RuntimeError(f"--launcher {cfg.launcher} expects to be started by torchrun "
                                   "(RANK/WORLD_SIZE unset); use --launcher none for one process")
            dist.init_process_group(backend="gloo")
    _use_safe_checkpoints(cfg)
    _defer_runtime_scalars(cfg)
    policy = cfg.get("nonfinite_loss", "raise")
    if policy not in NONFINITE_POLICIES:
        raise ValueError(f"config key nonfinite_loss must be one of {NONFINITE_POLICIES}, got {policy!r}")
    _name_the_experiment(cfg)
    runner = Runner.from_cfg(cfg)
    model = runner.model.module if hasattr(runner.model, "module") else runner.model
    if hasattr(model, "nonfinite_loss"):
        model.nonfinite_loss = policy
    elif "nonfinite_loss" in cfg:
        warnings.warn(f"nonfinite_loss={policy!r} applies to visionattn task models; {type(model).__name__} "
                      f"keeps its own behaviour")
    return runner


NONFINITE_POLICIES = ("raise", "skip")


def _defer_runtime_scalars(cfg: Config) -> None:
    """mmengine's implicit RuntimeInfoHook -> :class:`DeferredRuntimeInfoHook` and mmengine's
    (Amp)OptimWrapper -> visionattn's NoSync ones: the same scalars without a device synchronisation
    in every training iteration (``type='mmengine.RuntimeInfoHook'`` in
    ``default_hooks.runtime_info`` keeps mmengine's behaviour)."""
    hooks = dict(cfg.get("default_hooks") or {})
    info = hooks.get("runtime_info", dict(type="RuntimeInfoHook"))
    if isinstance(info, Mapping) and info.get("type") == "RuntimeInfoHook":
        hooks["runtime_info"] = dict(info, type="visionattn.DeferredRuntimeInfoHook")
        cfg.default_hooks = hooks
        # and the clipped gradient norm, logged through that hook (visionattn.engine.optim_wrappers)
        wrapper = cfg.get("optim_wrapper")
        swap = {"OptimWrapper": "visionattn.NoSyncOptimWrapper", "AmpOptimWrapper": "visionattn.NoSyncAmpOptimWrapper"}
        if isinstance(wrapper, Mapping) and "optimizer" in wrapper and wrapper.get("type", "OptimWrapper") in swap:
            cfg.optim_wrapper = dict(wrapper, type=swap[wrapper.get("type", "OptimWrapper")])


def _use_safe_checkpoints(cfg: Config) -> None:
    """mmengine's CheckpointHook (also its implicit default) -> :class:`SafeCheckpointHook`, same
    arguments: atomic writes, old checkpoints deleted only after the new one is complete."""
    hooks = dict(cfg.get("default_hooks") or {})
    ckpt = hooks.get("checkpoint", dict(type="CheckpointHook", interval=1))
    if isinstance(ckpt, Mapping) and ckpt.get("type") in ("CheckpointHook", "mmengine.CheckpointHook"):
        hooks["checkpoint"] = dict(ckpt, type="visionattn.SafeCheckpointHook")
        cfg.default_hooks = hooks
