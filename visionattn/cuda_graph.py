"""CUDA-graph replay: capture once per input signature, then replay (inference and training).

Networks like MatchStereo run thousands of small kernels per forward; in eager mode the GPU
waits on Python to launch them (launch-bound). A CUDA graph records the whole forward once and
replays it with one launch, without ``torch.compile``'s multi-minute compile step::

    runner = CUDAGraphRunner(lambda l, r: model(l, r)["disparity"])
    disp = runner(left, right)   # first call per shape: warm-up + capture; later calls: replay

Rules of CUDA graphs that apply: the callable must be free of host synchronisation
(``.item()``, ``nonzero``, data-dependent shapes, CPU->GPU copies) and of randomness that should
differ between calls; the parameters it reads must keep their memory (``load_state_dict`` is fine,
``model.to(...)`` is not: pass a ``key`` that changes with it). Each captured signature keeps
its own memory pool alive. :class:`CUDAGraphRunner` is for inference (runs under
``torch.no_grad()``); :class:`TrainingGraph` captures a module's forward and backward for
training steps of fixed shape (the optimizer step stays outside, updating parameters in place).
:func:`graph_runner` keeps one inference runner per (module, name) for as long as the module lives,
which is how ``visionattn.inference`` replays a network without storing anything on it.
"""
import warnings
import weakref
from collections import OrderedDict
from contextlib import nullcontext
from typing import Any, Callable, Dict, Hashable, Optional

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils import _pytree as pytree

from .ops.dispatch import recording_graph


class _Captured:
    def __init__(self, graph: "torch.cuda.CUDAGraph", inputs, outputs):
        self.graph, self.inputs, self.outputs = graph, inputs, outputs


class CUDAGraphRunner:
    """Call ``fn(*tensors)`` through CUDA graphs captured per (shape, dtype, device, ``key()``).

    Args:
        fn: the inference callable; positional CUDA tensor arguments, returns tensors (possibly
            nested in dicts/lists/tuples).
        key: optional ``() -> hashable`` mixed into the signature, e.g. the dtype and storage of
            the model's weights, so a moved or re-cast model is captured again.
        max_graphs: signatures kept (least recently used dropped with their memory).
        warmup: eager calls on a side stream before capture (autotuning, lazy init).
        clone_outputs: return copies (safe to keep across calls). ``False`` returns the graph's
            own output tensors, overwritten by the next replay of the same signature.
        share_pool: capture every signature into one memory pool, so that many signatures (e.g. row
            counts rounded up to buckets) cost about the memory of the largest. Safe because replays
            run one at a time on one stream and a replay's outputs are used (copied) before the next
            one; with ``clone_outputs=False`` the caller must do that copy.
    """

    def __init__(self, fn: Callable, key: Optional[Callable[[], Hashable]] = None, max_graphs: int = 4,
                 warmup: int = 2, clone_outputs: bool = True, share_pool: bool = False):
        if max_graphs < 1 or warmup < 1:
            raise ValueError(f"max_graphs ({max_graphs}) and warmup ({warmup}) must be >= 1")
        self.fn, self.key, self.max_graphs, self.warmup = fn, key, max_graphs, warmup
        self.clone_outputs, self.share_pool = clone_outputs, share_pool
        self._pool = None
        self._graphs: "OrderedDict[Hashable, _Captured]" = OrderedDict()

    def _signature(self, args) -> Hashable:
        for i, a in enumerate(args):
            if not isinstance(a, torch.Tensor) or not a.is_cuda:
                raise ValueError(f"CUDAGraphRunner: argument {i} must be a CUDA tensor, got "
                                 f"{type(a).__name__}{'' if not isinstance(a, torch.Tensor) else ' on ' + str(a.device)}")
        sig = tuple((tuple(a.shape), a.stride(), a.dtype, a.device) for a in args)
        return sig + ((self.key(),) if self.key is not None else ())

    @torch.no_grad()
    def _capture(self, args) -> _Captured:
        static_inputs = [a.clone() for a in args]
        side = torch.cuda.Stream(device=args[0].device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.fn(*static_inputs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        if self.share_pool and self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        with torch.cuda.graph(graph, pool=self._pool):
            static_outputs = self.fn(*static_inputs)
        return _Captured(graph, static_inputs, static_outputs)

    @torch.no_grad()
    def __call__(self, *args: torch.Tensor) -> Any:
        sig = self._signature(args)
        captured = self._graphs.get(sig)
        if captured is None:
            captured = self._capture(args)
            self._graphs[sig] = captured
            while len(self._graphs) > self.max_graphs:
                self._graphs.popitem(last=False)
        else:
            self._graphs.move_to_end(sig)
        for static, a in zip(captured.inputs, args):
            static.copy_(a)
        captured.graph.replay()
        out = captured.outputs
        return pytree.tree_map_only(torch.Tensor, torch.Tensor.clone, out) if self.clone_outputs else out

    def __len__(self) -> int:
        """Number of captured signatures."""
        return len(self._graphs)

    def clear(self) -> None:
        """Drop every captured graph and its memory."""
        self._graphs.clear()
        self._pool = None


def module_key(module: nn.Module) -> Hashable:
    """What a captured graph of ``module`` depends on besides its inputs: train/eval mode and the address,
    dtype and device of its first parameter (``.to()``/``.half()`` move it and force a new capture;
    ``load_state_dict`` copies in place and keeps the graphs valid)."""
    p = next(module.parameters(), None)
    return (module.training,) if p is None else (module.training, p.data_ptr(), p.dtype, p.device)


# module -> {name: runner}; weak keys: the cache never keeps a module (or its graphs' memory) alive
_MODULE_RUNNERS: "weakref.WeakKeyDictionary[nn.Module, Dict[str, CUDAGraphRunner]]" = weakref.WeakKeyDictionary()


def graph_runner(module: nn.Module, name: str, fn: Callable[..., Any], **runner_kwargs) -> CUDAGraphRunner:
    """The :class:`CUDAGraphRunner` of ``fn(module, *tensors)`` kept for ``module`` under ``name``.

    Made on the first call for (module, name), returned as is afterwards (``name`` stands for ``fn``:
    one name, one computation). Signatures are keyed by :func:`module_key` as well, so a moved, re-cast
    or mode-switched module is captured again. ``fn`` receives the module on each call; the runner
    holds it weakly, so the module's lifetime decides when its graphs are freed (or
    ``graph_runners(module).clear()``). ``runner_kwargs`` go to :class:`CUDAGraphRunner` on creation.
    """
    runners = _MODULE_RUNNERS.setdefault(module, {})
    if name not in runners:
        ref = weakref.ref(module)
        runners[name] = CUDAGraphRunner(lambda *args: fn(ref(), *args), key=lambda: module_key(ref()),
                                        **runner_kwargs)
    return runners[name]


def graph_runners(module: nn.Module) -> Dict[str, CUDAGraphRunner]:
    """The runners :func:`graph_runner` keeps for ``module`` (name -> runner; ``.clear()`` frees them)."""
    return _MODULE_RUNNERS.setdefault(module, {})


def _memory_order(t: torch.Tensor) -> Optional[list]:
    """Dimensions of ``t`` from the largest stride to the smallest, when ``t`` permuted so is contiguous
    (every dense tensor: plain, channels_last, ...); None otherwise."""
    order = sorted(range(t.dim()), key=lambda d: (t.stride(d), t.size(d)), reverse=True)
    return order if t.permute(order).is_contiguous() else None


# layers whose forward hands their weight and bias straight to a matrix product or convolution
# (torch.nn's own, and the library's bias-gradient layers): a subclass with a forward of its own
# (e.g. a weight-standardised convolution) may compute with its weight in float32 first
_PLAIN_LAYER_MODULES = ("torch.nn.modules.linear", "torch.nn.modules.conv", "visionattn.models.bias_grad_layers")


def autocast_weights(module: nn.Module) -> "OrderedDict[str, torch.Tensor]":
    """The float32 weights and biases of ``module``'s Linear and convolution layers (by name), dense in
    memory: what autocast casts to its lower precision at each use."""
    found: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    seen = set()
    for prefix, layer in module.named_modules():
        if not (isinstance(layer, (nn.Linear, nn.modules.conv._ConvNd))
                and type(layer).forward.__module__ in _PLAIN_LAYER_MODULES):
            continue
        if layer._forward_pre_hooks or parametrize.is_parametrized(layer):
            continue  # its weight is computed before the forward (spectral or weight norm): in float32
        for name, p in layer.named_parameters(recurse=False):
            if p.dtype == torch.float32 and id(p) not in seen and _memory_order(p) is not None:
                seen.add(id(p))
                found[f"{prefix}.{name}" if prefix else name] = p
    return found


def cast_together(tensors, dtype: torch.dtype) -> list:
    """``[t.to(dtype) for t in tensors]`` in one concatenation and one cast instead of a kernel per
    tensor, each result with its tensor's layout. The same values; autograd flows back through views,
    one concatenation and one cast. The tensors must be dense (see :func:`autocast_weights`)."""
    orders = [_memory_order(t) for t in tensors]
    flat = torch.cat([t.permute(order).reshape(-1) for t, order in zip(tensors, orders)]).to(dtype)
    pieces = flat.split([t.numel() for t in tensors])
    out = []
    for t, order, piece in zip(tensors, orders, pieces):
        inverse = sorted(range(t.dim()), key=order.__getitem__)
        out.append(piece.view([t.size(d) for d in order]).permute(inverse))
    return out


def _use_counts(outputs, nodes) -> list:
    """How many autograd edges of the graph behind ``outputs`` lead to each of ``nodes``."""
    index = {node: i for i, node in enumerate(nodes)}
    counts = [0] * len(nodes)
    stack = [t.grad_fn for t in outputs if isinstance(t, torch.Tensor) and t.grad_fn is not None]
    seen = set()
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for nxt, _ in node.next_functions:
            if nxt is not None:
                if nxt in index:
                    counts[index[nxt]] += 1
                stack.append(nxt)
    return counts


class _TensorLeaves(nn.Module):
    """``module(*args)`` with only its tensor leaves as outputs (what ``make_graphed_callables``
    accepts); the structure and the other leaves (Python ints such as a padding tuple, constant
    for a given input signature) are kept from the capture to rebuild the full output.

    With ``cast_dtype`` (the autocast dtype of the capture), the weights autocast would cast one by
    one (:func:`autocast_weights`) are cast together (:func:`cast_together`) and the module runs on
    those copies: autocast then finds them in its dtype and adds no cast of its own. A weight used
    by several operations stays with autocast: its copy's gradient contributions would be summed in
    the low precision, where autocast sums them in float32. Which weights those are, the first call
    (a warm-up of ``make_graphed_callables``) finds in the autograd graph."""

    def __init__(self, module: nn.Module, cast_dtype: Optional[torch.dtype] = None):
        super().__init__()
        self.module = module
        self.spec, self.leaves = None, None
        self.cast_dtype = cast_dtype
        self.cast = autocast_weights(module) if cast_dtype is not None else OrderedDict()
        self._probe = True

    def forward(self, *args: torch.Tensor):
        if self.cast:
            copies = cast_together(list(self.cast.values()), self.cast_dtype)
            out = torch.func.functional_call(self.module, dict(zip(self.cast, copies)), args)
        else:
            out = self.module(*args)
        leaves, self.spec = pytree.tree_flatten(out)
        if self.cast and self._probe and torch.is_grad_enabled():
            counts = _use_counts(leaves, [c.grad_fn for c in copies])
            self.cast = OrderedDict((k, p) for (k, p), n in zip(self.cast.items(), counts) if n == 1)
            self._probe = False
        self.leaves = leaves
        return tuple(t for t in leaves if isinstance(t, torch.Tensor))

    def rebuild(self, tensors) -> Any:
        it = iter(tensors)
        return pytree.tree_unflatten([next(it) if isinstance(t, torch.Tensor) else t for t in self.leaves],
                                     self.spec)


def _replays(module: nn.Module, args) -> bool:
    """Whether :class:`TrainingGraph` replays ``module(*args)``: a training call on CUDA tensors."""
    return module.training and torch.is_grad_enabled() and all(isinstance(a, torch.Tensor) and a.is_cuda
                                                               for a in args)


class TrainingGraph:
    """Forward and backward of ``module`` replayed from CUDA graphs, one capture per input signature.

    A drop-in for ``module(*args)`` in a training step whose shapes repeat (fixed-size crops):
    the outputs have the module's structure and the backward through them replays a captured
    graph, so a launch-bound network (thousands of small kernels) runs at GPU speed. The optimizer
    step stays outside (it updates parameters in place). Gradients must be cleared with
    ``zero_grad(set_to_none=True)`` before each call: the replayed backward hands out its own
    buffers as ``.grad``, so gradient accumulation is refused with an error. Built on
    :func:`torch.cuda.make_graphed_callables`, whose rules apply: no host synchronisation in the
    forward, no module hooks; its warm-up runs 3 forward+backward passes (BatchNorm statistics
    advance, ``.grad`` does not). Autocast is recorded as it is at the capture (one graph per
    autocast dtype; its cast cache is off while capturing). Outputs are the graph's buffers,
    overwritten by the next call: compute the loss first. Calls that are not training calls (eval
    mode, grad disabled, CPU tensors) run ``module`` eagerly. Under autocast the float32 weights of
    the plain Linear and convolution layers are cast to the autocast dtype together (a concatenation
    and one cast), where autocast launches a cast per weight and one back per gradient (see
    :class:`_TensorLeaves`; same values).

    Args:
        module: the network (``nn.Module``) in train mode on CUDA.
        max_graphs: input signatures kept (least recently used dropped with their memory).
    """

    def __init__(self, module: nn.Module, max_graphs: int = 2):
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be >= 1, got {max_graphs}")
        self.module, self.max_graphs = module, max_graphs
        self._graphs: "OrderedDict[Hashable, _TensorLeaves]" = OrderedDict()
        # the parameters, listed once per capture: walking the module tree for them took about 0.5 ms of
        # host time per call for BiFormer-S on a development CPU (500 tensors, 419 modules), before the replay
        self._params: Optional[list] = None

    def __call__(self, *args: torch.Tensor) -> Any:
        if not _replays(self.module, args):
            return self.module(*args)
        # the replayed backward hands out its own gradient buffers, which autograd adopts as ``.grad``
        # when it is None; added to an existing ``.grad`` they would alias it and double it
        if self._params is None:
            self._params = list(self.module.parameters())
        if any(p.grad is not None for p in self._params):
            raise RuntimeError("TrainingGraph needs the gradients cleared before each step "
                               "(optimizer.zero_grad(set_to_none=True)); gradient accumulation is not supported")
        params = self._params[0] if self._params else None
        amp = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else None
        sig = tuple((tuple(a.shape), a.stride(), a.dtype, a.device, a.requires_grad) for a in args) + (
            None if params is None else (params.data_ptr(), params.dtype), amp)
        graphed = self._graphs.get(sig)
        if graphed is None:
            self._params = list(self.module.parameters())  # a new capture sees the module as it is now
            samples = tuple(a.detach().clone().requires_grad_(a.requires_grad) for a in args)
            # the graph records autocast's casts; its weight-cast cache must be off while capturing
            # (mmengine's AmpOptimWrapper leaves it on): same numbers, the casts are recomputed
            amp_ctx = torch.autocast("cuda", dtype=amp, cache_enabled=False) if amp else nullcontext()
            with amp_ctx, warnings.catch_warnings(), recording_graph():
                # parameters that already took an eager step own AccumulateGrad nodes made on the
                # default stream; the capture's side-stream warm-up then triggers torch's stream-
                # mismatch warning, which is harmless here (make_graphed_callables syncs the streams)
                warnings.filterwarnings("ignore", message="The AccumulateGrad node's stream does not match")
                graphed = torch.cuda.make_graphed_callables(_TensorLeaves(self.module, amp), samples,
                                                            allow_unused_input=True)
            self._graphs[sig] = graphed
            while len(self._graphs) > self.max_graphs:
                self._graphs.popitem(last=False)
        else:
            self._graphs.move_to_end(sig)
        return graphed.rebuild(graphed(*args))

    def __len__(self) -> int:
        """Number of captured signatures."""
        return len(self._graphs)

    def clear(self) -> None:
        """Drop every captured graph and its memory (after replacing parameters, e.g. ``.to()``)."""
        self._graphs.clear()
        self._params = None
