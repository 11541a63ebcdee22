"""CUDA-graph replay of an inference callable: capture once per input signature, then replay.

Networks like MatchStereo run thousands of small kernels per forward; in eager mode the GPU
waits on Python to launch them (launch-bound). A CUDA graph records the whole forward once and
replays it with one launch, without ``torch.compile``'s multi-minute compile step::

    runner = CUDAGraphRunner(lambda l, r: model(l, r)["disparity"])
    disp = runner(left, right)   # first call per shape: warm-up + capture; later calls: replay

Rules of CUDA graphs that apply: the callable must be free of host synchronisation
(``.item()``, ``nonzero``, data-dependent shapes, CPU->GPU copies) and of randomness that should
differ between calls; the parameters it reads must keep their memory (``load_state_dict`` is fine,
``model.to(...)`` is not: pass a ``key`` that changes with it); inference only (runs under
``torch.no_grad()``). Each captured signature keeps its own memory pool alive.
"""
from collections import OrderedDict
from typing import Any, Callable, Hashable, Optional

import torch


def _map_tensors(obj: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return type(obj)((k, _map_tensors(v, fn)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_tensors(v, fn) for v in obj)
    return obj


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
    """

    def __init__(self, fn: Callable, key: Optional[Callable[[], Hashable]] = None, max_graphs: int = 4,
                 warmup: int = 2, clone_outputs: bool = True):
        if max_graphs < 1 or warmup < 1:
            raise ValueError(f"max_graphs ({max_graphs}) and warmup ({warmup}) must be >= 1")
        self.fn, self.key, self.max_graphs, self.warmup = fn, key, max_graphs, warmup
        self.clone_outputs = clone_outputs
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
        with torch.cuda.graph(graph):
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
        return _map_tensors(captured.outputs, torch.Tensor.clone) if self.clone_outputs else captured.outputs

    def __len__(self) -> int:
        """Number of captured signatures."""
        return len(self._graphs)

    def clear(self) -> None:
        """Drop every captured graph and its memory."""
        self._graphs.clear()
