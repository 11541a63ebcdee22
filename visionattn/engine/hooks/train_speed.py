"""Per-rank record of a training run's speed, losses and peak memory, for throughput measurements."""
import json
import os
import platform
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch
from mmengine.hooks import Hook

from ...registry import HOOKS
from .peak_memory import PeakMemory


def _device_stats(peak: PeakMemory) -> Dict:
    if not peak.active():
        return dict(device="cpu")
    index = torch.cuda.current_device()
    return dict(device=f"cuda:{index}", device_name=torch.cuda.get_device_name(index), **peak.mib())


@HOOKS.register_module()
class TrainSpeedHook(Hook):
    """Writes ``<work_dir>/<filename>`` (``{rank}`` filled in) for every rank at the end of training.

    The file holds, per training iteration, its 0-based index, the wall-clock time when it ended
    (``time.perf_counter``, after a device synchronisation), the samples this rank trained on and
    its loss (this rank's; DDP averages gradients, not the logged losses), plus the rank, the world
    size and, on CUDA, the peak memory allocated and reserved on the rank's GPU since training
    began (model, optimiser state, activations, CUDA-graph pools), and two checksums of the final
    weights (sum and L2 norm of all parameters, in float64), equal on every rank of a correct DDP
    run. Images per second over any window of iterations follow from the times;
    ``benchmarks/ddp_scaling.py`` reads these files.

    Args:
        filename: name of the file in the work dir; ``{rank}`` is replaced by the rank.
        synchronize: synchronise the device before reading the clock (exact per-iteration times;
            mmengine's own logging already waits for each iteration's loss, so it costs nothing).
    """

    # Before LoggerHook (BELOW_NORMAL): its log lines reset torch's peak-memory counters (PeakMemory).
    priority = "NORMAL"

    def __init__(self, filename: str = "train_speed_rank{rank}.json", synchronize: bool = True):
        if "{rank}" not in filename:
            raise ValueError(f"filename must contain '{{rank}}' (one file per rank), got {filename!r}")
        self.filename, self.synchronize = filename, synchronize
        self.records: List[Dict] = []
        self._start: Optional[float] = None
        self._peak = PeakMemory()

    def _now(self) -> float:
        if self.synchronize and torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
        return time.perf_counter()

    def before_train(self, runner) -> None:
        self._peak.reset()
        self.records = []
        self._start = self._now()

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs: Optional[dict] = None) -> None:
        inputs = (data_batch or {}).get("inputs") if isinstance(data_batch, dict) else None
        loss = (outputs or {}).get("loss")
        self._peak.update()
        self.records.append(dict(iter=runner.iter, time=self._now(),
                                 samples=len(inputs) if inputs is not None else None,
                                 loss=None if loss is None else float(loss.detach() if hasattr(loss, "detach") else loss)))

    @staticmethod
    def weights_checksums(model: torch.nn.Module) -> Dict[str, float]:
        params = [p.detach().double() for p in getattr(model, "module", model).parameters()]
        return dict(weights_sum=float(sum(p.sum() for p in params)),
                    weights_norm=float(sum((p * p).sum() for p in params)) ** 0.5)

    def after_train(self, runner) -> None:
        out = dict(rank=runner.rank, world_size=runner.world_size, pid=os.getpid(), host=platform.node(),
                   local_rank=int(os.environ.get("LOCAL_RANK", 0)), start_time=self._start,
                   **self.weights_checksums(runner.model), **_device_stats(self._peak), records=self.records)
        path = Path(runner.work_dir) / self.filename.format(rank=runner.rank)
        path.write_text(json.dumps(out, indent=1))
