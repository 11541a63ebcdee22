"""The one base of visionattn's task models: :class:`TaskModel`, an mmengine ``BaseModel``.

A task model holds a network and turns a batch into losses or predictions for mmengine's Runner.
Subclasses (:class:`~visionattn.engine.ImageClassifier`, ``StereoMatcher``, ``ImageRestorer``...)
write three methods, ``loss``, ``predict`` and ``_forward``; the rest is done here, once:

- **The network**, built by :func:`build_network` and held as ``self.network``. Documented form:
  ``network='name', network_kwargs=dict(...)`` (a name of :func:`visionattn.list_models` or timm;
  ``--cfg-options model.network=NAME`` swaps it), with ``pretrained=True`` (model-zoo weights) or
  ``checkpoint=PATH_OR_URL`` (ours or the family's official format). ``network=dict(name=...,
  **kwargs)`` and an already built ``nn.Module`` are accepted too.
- **cuda_graph=True**: ``loss`` calls the network through ``self.train_network()``, which replays
  its training forward and backward from CUDA graphs (:class:`visionattn.cuda_graph.TrainingGraph`);
  ``predict`` and ``_forward`` call ``self.network``.
- **Modes**: ``forward(inputs, data_samples, mode)`` -> ``loss(inputs, samples)`` (dict of loss
  tensors), ``predict(inputs, samples)`` (a list with one dict per sample, what the metrics read)
  or ``_forward(inputs)`` (``mode='tensor'``: the raw network output).
- **data_samples**, one convention: each dataset item is ``dict(inputs=..., data_samples=dict(...))``,
  one plain dict of fields per sample. Whatever the collate function made of a batch of them (one
  dict of (B, ...) tensors from ``default_collate``, a list of B dicts from ``restoration_collate``),
  ``loss`` and ``predict`` receive a :class:`DataSamples`: ``samples.stack('label')`` is a field of
  the batch as one (B, ...) tensor, ``samples[i]`` (or iterating) the i-th sample's dict.
- **Several optimisers** (a GAN's generator and discriminators): a subclass names them in
  ``optimizers`` (optimiser name -> attribute holding what it trains) and writes ``step_losses``;
  the config gives ``optim_wrapper=dict(constructor='MultiOptimWrapperConstructor', <name>=dict(
  type='OptimWrapper', optimizer=...), ...)`` (an mmengine ``OptimWrapperDict``) and, optionally,
  ``model.step_schedule=dict(<name>=dict(every=k, start=n))``. Each training iteration then runs,
  in the order of ``optimizers``, the step of every optimiser due at that iteration. Distributed
  runs need ``model_wrapper_cfg=dict(type='MMSeparateDistributedDataParallel')`` (mmengine's plain
  DDP wrapper bypasses ``train_step``).
"""
from collections import OrderedDict
from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any, ClassVar, Dict, Iterator, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn
from mmengine.logging import MessageHub
from mmengine.model import BaseModel, is_model_wrapper
from mmengine.optim import OptimWrapper, OptimWrapperDict

from ..cuda_graph import TrainingGraph
from ..registry import MODELS, OPTIM_WRAPPER_CONSTRUCTORS

NetworkSpec = Union[str, Mapping, nn.Module]
MODES = ("loss", "predict", "tensor")


def network_spec(network: Union[str, Mapping], network_kwargs: Optional[Mapping] = None) -> Tuple[str, Dict]:
    """(name, constructor kwargs) from either config form: ``'name'`` + ``network_kwargs`` or
    ``dict(name='name', **kwargs)`` (+ ``network_kwargs``, which may not repeat a key)."""
    if isinstance(network, str):
        name, kwargs = network, {}
    elif isinstance(network, Mapping):
        kwargs = dict(network)
        name = kwargs.pop("name", None)
        if not isinstance(name, str):
            raise ValueError(f"network=dict(...) needs name=<model name> (visionattn.list_models()), "
                             f"got {dict(network)}")
    else:
        raise ValueError(f"network must be a model name, dict(name=..., **kwargs) or an nn.Module, "
                         f"got {type(network).__name__}")
    extra = dict(network_kwargs or {})
    both = sorted(set(kwargs) & set(extra))
    if both:
        raise ValueError(f"{both} given both in network=dict(...) and in network_kwargs; give each once")
    return name, {**kwargs, **extra}


def build_network(network: NetworkSpec, network_kwargs: Optional[Mapping] = None, *, pretrained: bool = False,
                  checkpoint: Optional[str] = None, **task_kwargs) -> nn.Module:
    """The network of a task model (see the module docstring for the accepted forms).

    ``task_kwargs`` are constructor arguments the task fixes (``ImageClassifier``'s ``num_classes``):
    a name's kwargs may not repeat them; a built module is taken as it is. A built module loads
    ``checkpoint`` (our format) too; ``pretrained`` needs a name.
    """
    if isinstance(network, nn.Module):
        if network_kwargs or pretrained:
            raise ValueError(f"network is an already built {type(network).__name__}: network_kwargs and "
                             f"pretrained apply to a model name; pass the name instead, or checkpoint=PATH")
        if checkpoint is not None:
            from ..hub import load_checkpoint

            load_checkpoint(network, checkpoint)
        return network
    name, kwargs = network_spec(network, network_kwargs)
    both = sorted(set(kwargs) & set(task_kwargs))
    if both:
        raise ValueError(f"{both} of network {name!r} are set by the task model's own arguments "
                         f"({ {k: task_kwargs[k] for k in both} }); remove them from network_kwargs")
    from ..factory import create_model  # the factory imports every model family: not at module import

    return create_model(name, pretrained=pretrained, checkpoint=checkpoint, **kwargs, **task_kwargs)


def _row(value: Any, i: int) -> Any:
    return {k: _row(v, i) for k, v in value.items()} if isinstance(value, Mapping) else value[i]


def _batch_size(value: Any) -> int:
    """Values per field of a batched dict (-1: not a batch of values)."""
    if isinstance(value, Mapping):
        sizes = {_batch_size(v) for v in value.values()}
        return sizes.pop() if len(sizes) == 1 else -1
    if isinstance(value, torch.Tensor):
        return len(value) if value.dim() else -1
    return len(value) if isinstance(value, (list, tuple)) else -1


class DataSamples(Sequence):
    """The ``data_samples`` of one batch of B samples, read one way whatever the collate function did.

    Accepts a dict of batched fields (``default_collate``: (B, ...) tensors, lists of B values),
    a list of B per-sample dicts (``restoration_collate``, ``pseudo_collate``) or None (no fields).

    - ``samples.stack(key)``: that field of every sample as one (B, ...) tensor (no copy when the
      batch came batched); a field that no sample has gives ``None`` with ``required=False``.
    - ``samples[i]``, ``for s in samples``: the i-th sample's dict (tensors without the batch dim).
    - ``key in samples``: every sample has the field.
    """

    def __init__(self, data_samples: Union[None, Mapping, Sequence[Mapping]], batch_size: int,
                 device: Optional[torch.device] = None):
        self.batch_size, self.device = batch_size, device
        self._batched: Optional[Dict] = None
        self._list: Optional[List[Dict]] = None
        if data_samples is None:
            self._list = [{} for _ in range(batch_size)]
        elif isinstance(data_samples, Mapping):
            bad = {k: _batch_size(v) for k, v in data_samples.items() if _batch_size(v) != batch_size}
            if bad:
                raise ValueError(f"batched data_samples must hold {batch_size} values per field (the batch "
                                 f"size of inputs); got {bad} for fields {sorted(bad)}")
            self._batched = dict(data_samples)
        elif isinstance(data_samples, Sequence) and all(isinstance(s, Mapping) for s in data_samples):
            if len(data_samples) != batch_size:
                raise ValueError(f"{len(data_samples)} data_samples for a batch of {batch_size} inputs")
            self._list = list(data_samples)
        else:
            raise ValueError(f"data_samples must be a dict of batched fields or a list of per-sample dicts, "
                             f"got {type(data_samples).__name__}")

    def __len__(self) -> int:
        return self.batch_size

    def __getitem__(self, i: int) -> Dict:
        return self._list[i] if self._list is not None else _row(self._batched, i)

    def __iter__(self) -> Iterator[Dict]:
        return (self[i] for i in range(self.batch_size))

    def __contains__(self, key: str) -> bool:
        if self._batched is not None:
            return key in self._batched
        return self.batch_size > 0 and all(key in s for s in self._list)

    def fields(self) -> List[str]:
        """The fields every sample has."""
        keys = self._batched if self._batched is not None else (self._list[0] if self._list else {})
        return sorted(k for k in keys if k in self)

    def stack(self, key: str, required: bool = True) -> Optional[torch.Tensor]:
        """Field ``key`` of the batch as a (B, ...) tensor (values that are not tensors are converted)."""
        if key not in self:
            if self._list is not None and any(key in s for s in self._list):
                raise ValueError(f"only some samples of the batch have {key!r}; a field must be in all or none")
            if not required:
                return None
            raise ValueError(f"data_samples have no {key!r} field (fields: {self.fields()}); the dataset must "
                             f"yield it for this task model")
        values = self._batched[key] if self._batched is not None else [s[key] for s in self._list]
        if isinstance(values, torch.Tensor):
            return values
        if all(isinstance(v, torch.Tensor) for v in values):
            return torch.stack(values)
        return torch.as_tensor(values, device=self.device)


class TaskModel(BaseModel):
    """Base of the task models (module docstring). Subclasses write ``loss``, ``predict``, ``_forward``.

    Args:
        network: a model name (with ``network_kwargs``), ``dict(name=..., **kwargs)`` or an nn.Module.
        network_kwargs: the network's constructor arguments (``drop_path_rate``, ``img_size``...).
        pretrained / checkpoint: initial weights, as in :func:`visionattn.create_model`.
        data_preprocessor: an mmengine data preprocessor (dict or module); default the class's
            ``default_data_preprocessor``.
        init_cfg: mmengine ``init_cfg``, applied by ``init_weights`` (which never re-initialises
            the network: it initialised itself and loaded its weights when built).
        cuda_graph: replay the network's training forward and backward from CUDA graphs (one
            capture per input shape). Needs fixed input shapes (``drop_last``, fixed crops) and no
            gradient accumulation; CPU runs and evaluation stay eager.
        step_schedule: with several optimisers, ``{name: dict(every=k, start=n)}``: optimiser
            ``name`` steps at iterations ``n, n + k, n + 2k...`` (0-based; default every=1, start=0).
        task_kwargs: constructor arguments the subclass fixes (see :func:`build_network`).
    """

    default_data_preprocessor: ClassVar[Dict] = dict(type="BaseDataPreprocessor")
    # a non-finite loss: 'raise' (stop before the update, naming the iteration and the terms) or 'skip'
    # (no update, counted in ``nonfinite_skipped``); set by the config key ``nonfinite_loss``
    nonfinite_loss: str = "raise"
    nonfinite_skipped: int = 0
    # optimiser name -> attribute (an nn.Module) whose parameters it trains; empty: one optimiser
    optimizers: ClassVar[Dict[str, str]] = {}

    def __init__(self, network: NetworkSpec, network_kwargs: Optional[Mapping] = None, *, pretrained: bool = False,
                 checkpoint: Optional[str] = None, data_preprocessor: Union[None, Dict, nn.Module] = None,
                 init_cfg: Optional[Dict] = None, cuda_graph: bool = False,
                 step_schedule: Optional[Mapping[str, Mapping]] = None, task_kwargs: Optional[Mapping] = None):
        preprocessor = self.default_data_preprocessor if data_preprocessor is None else data_preprocessor
        if isinstance(preprocessor, Mapping):  # our registry (falls back to mmengine's), whatever scope is current
            # non_blocking: batches come from pinned loader memory, so the upload to the device does
            # not wait for the previous step to finish (mmengine's default waits); False restores that
            preprocessor = MODELS.build({"_scope_": "visionattn", "non_blocking": True, **preprocessor})
        super().__init__(data_preprocessor=preprocessor, init_cfg=init_cfg)
        self.network = build_network(network, network_kwargs, pretrained=pretrained, checkpoint=checkpoint,
                                     **(task_kwargs or {}))
        self.train_graph = TrainingGraph(self.network) if cuda_graph else None
        self.step_schedule = self._check_schedule(step_schedule or {})
        self._multi_steps_run = 0  # train_step calls with several optimisers (iteration outside a runner)

    # --- the network ------------------------------------------------------------------------

    def train_network(self):
        """The network as ``loss`` calls it: its CUDA-graph replay with ``cuda_graph=True``, else itself."""
        return self.network if self.train_graph is None else self.train_graph

    def init_weights(self) -> None:
        """Apply ``init_cfg`` if one is given, nothing else: the network initialised itself and loaded
        its ``pretrained``/``checkpoint`` weights when built (mmengine's default would call a timm
        network's own ``init_weights`` again at the start of training and wipe loaded weights)."""
        if self.init_cfg:
            from mmengine.model import initialize

            initialize(self, self.init_cfg)

    # --- modes ------------------------------------------------------------------------------

    def forward(self, inputs: torch.Tensor, data_samples: Union[None, Mapping, Sequence[Mapping]] = None,
                mode: str = "tensor"):
        """``mode='loss'`` -> dict of losses; ``'predict'`` -> one dict per sample; ``'tensor'`` -> the
        network's raw output. ``data_samples``: see :class:`DataSamples` (needed by ``'loss'``)."""
        if mode not in MODES:
            raise ValueError(f"mode must be 'loss', 'predict' or 'tensor', got {mode!r}")
        if mode == "tensor":
            return self._forward(inputs)
        if mode == "loss" and data_samples is None:
            raise ValueError(f"mode='loss' needs data_samples (the targets); {type(self).__name__} got None")
        samples = DataSamples(data_samples, len(inputs), getattr(inputs, "device", None))
        return self.loss(inputs, samples) if mode == "loss" else self.predict(inputs, samples)

    def loss(self, inputs: torch.Tensor, samples: DataSamples) -> Dict[str, torch.Tensor]:
        """Loss terms of a batch (mmengine sums the keys containing ``loss``)."""
        raise NotImplementedError(f"{type(self).__name__} does not define loss()")

    def predict(self, inputs: torch.Tensor, samples: DataSamples) -> List[Dict]:
        """One dict per sample: the predictions and the ground truth the task's metric reads."""
        raise NotImplementedError(f"{type(self).__name__} does not define predict()")

    def _forward(self, inputs: torch.Tensor):
        """The raw network output (``mode='tensor'``)."""
        return self.network(inputs)

    # --- several optimisers ----------------------------------------------------------------

    def optimizer_modules(self) -> Dict[str, nn.Module]:
        """Optimiser name -> the module whose parameters it trains, from ``optimizers``."""
        return OrderedDict((name, getattr(self, attr)) for name, attr in self.optimizers.items())

    def step_losses(self, name: str, inputs: torch.Tensor, samples: DataSamples,
                    shared: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        """Loss terms of optimiser ``name``'s step (only its parameters get gradients from them).

        ``shared`` lives for one iteration: a step may leave results for the next ones (e.g. the
        generator's output, which the discriminator's step then scores detached). Give the terms
        of different optimisers different names (``loss_g_pixel``, ``loss_d_real``...).
        """
        raise NotImplementedError(f"{type(self).__name__} declares optimizers {list(self.optimizers)} "
                                  f"but does not define step_losses()")

    def _check_schedule(self, schedule: Mapping[str, Mapping]) -> Dict[str, Dict[str, int]]:
        unknown = sorted(set(schedule) - set(self.optimizers))
        if unknown:
            raise ValueError(f"step_schedule names {unknown}, which are not optimisers of {type(self).__name__} "
                             f"(it has {list(self.optimizers) or 'one, unnamed'})")
        out = {}
        for name, s in schedule.items():
            bad = sorted(set(s) - {"every", "start"})
            every, start = s.get("every", 1), s.get("start", 0)
            if bad or not (isinstance(every, int) and every >= 1 and isinstance(start, int) and start >= 0):
                raise ValueError(f"step_schedule[{name!r}] must be dict(every=int >= 1, start=int >= 0), got {dict(s)}")
            out[name] = dict(every=every, start=start)
        return out

    def steps_at(self, name: str, iteration: int) -> bool:
        """Whether optimiser ``name`` steps at (0-based) training ``iteration``."""
        s = self.step_schedule.get(name, {})
        every, start = s.get("every", 1), s.get("start", 0)
        return iteration >= start and (iteration - start) % every == 0

    def train_iteration(self) -> int:
        """The 0-based training iteration being run: the Runner's (``MessageHub`` info ``iter``, which a
        resumed run restores) or, outside a runner, the number of earlier multi-optimiser steps."""
        iteration = MessageHub.get_current_instance().get_info("iter")
        return self._multi_steps_run if iteration is None else int(iteration)

    @contextmanager
    def _frozen_except(self, optim_wrapper: OptimWrapperDict, name: str):
        """Parameters of the other optimisers do not require gradients inside (so their ``.grad``
        stays empty while a loss through them, e.g. the generator's adversarial term, backpropagates)."""
        own = {id(p) for group in optim_wrapper[name].param_groups for p in group["params"]}
        frozen = [p for other, wrapper in optim_wrapper.items() if other != name
                  for group in wrapper.param_groups for p in group["params"] if p.requires_grad and id(p) not in own]
        for p in frozen:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p in frozen:
                p.requires_grad_(True)

    def _update(self, wrapper: OptimWrapper, total: torch.Tensor, logs: Dict[str, torch.Tensor],
                optimizer: Optional[str] = None) -> Dict[str, torch.Tensor]:
        """``wrapper.update_params(total)`` when the loss is finite. Otherwise, by ``nonfinite_loss``:
        raise FloatingPointError naming the iteration and the non-finite terms (before any update,
        so the weights and the checkpoints saved so far stay good), or skip the update and count it."""
        if bool(torch.isfinite(total.detach()).all()):
            wrapper.update_params(total)
            return logs
        bad = {k: float(v.detach().float().mean()) for k, v in logs.items() if "loss" in k
               and isinstance(v, torch.Tensor) and not bool(torch.isfinite(v.detach()).all())}
        if len(bad) > 1:  # name the terms; the total (``loss``) is non-finite because of them
            bad.pop("loss", None)
        terms = ", ".join(f"{k}={v}" for k, v in bad.items()) or f"loss={float(total.detach().float().mean())}"
        where = f"iteration {self.train_iteration()}" + (f" (optimiser {optimizer!r})" if optimizer else "")
        if self.nonfinite_loss == "skip":
            self.nonfinite_skipped += 1
            from mmengine.logging import print_log

            print_log(f"non-finite loss at {where}: {terms}; update skipped ({self.nonfinite_skipped} skipped "
                      f"so far, nonfinite_loss='skip')", logger="current", level=30)
            kept = OrderedDict((k, v) for k, v in logs.items() if k != "loss" and k not in bad)
            kept["nonfinite_skipped"] = torch.tensor(float(self.nonfinite_skipped))
            return kept
        raise FloatingPointError(
            f"non-finite loss at {where}: {terms}. Training stopped before this update, so the weights and "
            f"the checkpoints saved so far are good. Lower the learning rate, clip gradients "
            f"(optim_wrapper.clip_grad), check the data, or set nonfinite_loss='skip' in the config to skip "
            f"such steps")

    def train_step(self, data: Union[Dict, tuple, list], optim_wrapper: OptimWrapper) -> Dict[str, torch.Tensor]:
        """mmengine's step with one optimiser; with an ``OptimWrapperDict``, the due optimisers' steps.
        A non-finite loss is handled by ``nonfinite_loss`` (see :meth:`_update`)."""
        if not isinstance(optim_wrapper, OptimWrapperDict):
            with optim_wrapper.optim_context(self):
                data = self.data_preprocessor(data, True)
                losses = self._run_forward(data, mode="loss")
            total, logs = self.parse_losses(losses)
            return self._update(optim_wrapper, total, logs)
        if not self.optimizers:
            raise ValueError(f"{type(self).__name__} trains with one optimiser but got an OptimWrapperDict "
                             f"{list(optim_wrapper.keys())}; use one optim_wrapper, or a task model that "
                             f"declares `optimizers` and `step_losses`")
        if set(optim_wrapper.keys()) != set(self.optimizers):
            raise ValueError(f"optim_wrapper has optimisers {sorted(optim_wrapper.keys())}; "
                             f"{type(self).__name__} expects {sorted(self.optimizers)}")
        iteration = self.train_iteration()
        self._multi_steps_run += 1
        data = self.data_preprocessor(data, True)
        inputs = data["inputs"]
        samples = DataSamples(data.get("data_samples"), len(inputs), getattr(inputs, "device", None))
        shared: Dict[str, Any] = {}
        log_vars: Dict[str, torch.Tensor] = OrderedDict()
        for name in self.optimizers:
            if not self.steps_at(name, iteration):
                continue
            wrapper = optim_wrapper[name]
            with wrapper.optim_context(self), self._frozen_except(optim_wrapper, name):
                losses = self.step_losses(name, inputs, samples, shared)
            total, logs = self.parse_losses(losses)
            logs = self._update(wrapper, total, logs, name)
            if "loss" in logs:
                logs[f"loss_{name}"] = logs.pop("loss")
            log_vars.update(logs)
        return log_vars


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class MultiOptimWrapperConstructor:
    """One ``OptimWrapper`` per optimiser a :class:`TaskModel` names in ``optimizers``, as an
    ``OptimWrapperDict``::

        optim_wrapper = dict(constructor='MultiOptimWrapperConstructor',
                             generator=dict(type='OptimWrapper', optimizer=dict(type='Adam', lr=1e-4)),
                             discriminator=dict(type='OptimWrapper', optimizer=dict(type='Adam', lr=4e-4)))

    Each entry is built by mmengine's ``DefaultOptimWrapperConstructor`` over the module the
    optimiser trains (an entry may name its own ``constructor`` and ``paramwise_cfg``).
    """

    def __init__(self, optim_wrapper_cfg: Dict, paramwise_cfg: Optional[Dict] = None):
        if paramwise_cfg is not None:
            raise ValueError("MultiOptimWrapperConstructor: put paramwise_cfg inside each optimiser's entry "
                             "(optim_wrapper.<name>.paramwise_cfg)")
        bad = sorted(k for k, v in optim_wrapper_cfg.items() if not isinstance(v, Mapping))
        if bad:
            raise ValueError(f"MultiOptimWrapperConstructor: every entry of optim_wrapper must be one optimiser's "
                             f"dict(type='OptimWrapper', optimizer=...); {bad} are not")
        self.cfgs = {name: dict(cfg) for name, cfg in optim_wrapper_cfg.items()}

    def __call__(self, model: nn.Module) -> OptimWrapperDict:
        model = model.module if is_model_wrapper(model) else model
        if not isinstance(model, TaskModel) or not model.optimizers:
            raise ValueError(f"MultiOptimWrapperConstructor needs a TaskModel that declares `optimizers`, "
                             f"got {type(model).__name__}")
        modules = model.optimizer_modules()
        if set(self.cfgs) != set(modules):
            raise ValueError(f"optim_wrapper entries {sorted(self.cfgs)} do not match the optimisers of "
                             f"{type(model).__name__}: {sorted(modules)}")
        wrappers = OrderedDict()
        for name, module in modules.items():
            cfg = dict(self.cfgs[name])
            constructor_type = cfg.pop("constructor", "DefaultOptimWrapperConstructor")
            paramwise_cfg = cfg.pop("paramwise_cfg", None)
            constructor = OPTIM_WRAPPER_CONSTRUCTORS.build(
                dict(type=constructor_type, optim_wrapper_cfg=cfg, paramwise_cfg=paramwise_cfg))
            wrappers[name] = constructor(module)
        return OptimWrapperDict(**wrappers)
