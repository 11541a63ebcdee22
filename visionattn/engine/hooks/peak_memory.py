"""The most CUDA memory a training run held, kept across mmengine's log-time counter resets."""
import torch


class PeakMemory:
    """Peak CUDA memory allocated and reserved since :meth:`reset`, in bytes.

    mmengine's ``LoggerHook`` resets torch's peak counters each time it writes a log line
    (``get_max_cuda_memory`` reads ``max_memory_allocated`` and calls ``reset_peak_memory_stats``),
    so reading the counter once at the end of a run covers only the iterations since the last log
    line: the CUDA-graph captures and the warm-up are lost. A hook that runs before ``LoggerHook``
    (priority above ``BELOW_NORMAL``) calls :meth:`update` after every iteration; the maxima live here.
    """

    def __init__(self):
        self.allocated = self.reserved = 0

    @staticmethod
    def active() -> bool:
        return torch.cuda.is_available() and torch.cuda.is_initialized()

    def reset(self) -> None:
        self.allocated = self.reserved = 0
        if self.active():
            torch.cuda.reset_peak_memory_stats()

    def update(self) -> None:
        if self.active():
            stats = torch.cuda.memory_stats()  # one call for both counters
            self.allocated = max(self.allocated, stats.get("allocated_bytes.all.peak", 0))
            self.reserved = max(self.reserved, stats.get("reserved_bytes.all.peak", 0))

    def mib(self) -> dict:
        """``peak_allocated_mib`` and ``peak_reserved_mib`` after a last :meth:`update`."""
        self.update()
        return dict(peak_allocated_mib=self.allocated / 2**20, peak_reserved_mib=self.reserved / 2**20)
