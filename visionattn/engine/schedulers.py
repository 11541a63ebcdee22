"""mmengine's ``OneCycleLR`` with a checkpoint-safe state.

mmengine 0.10's one-cycle scheduler keeps its annealing function as a bound method in ``__dict__``,
and its ``state_dict()`` is that ``__dict__``: every checkpoint then pickles the bound method, i.e.
the scheduler object itself with its optimizer, and a weights-only ``torch.load`` (torch >= 2.6's
default, and the only way this library reads files) refuses the file — ``tools/test.py``, ``--resume``
and the inference tools could not read checkpoints of the LiDAR recipes. The class registered here
under the same name (configs in the ``visionattn`` scope find it first) stores the strategy's name
instead and rebinds the function on load; schedules are unchanged.
"""
from mmengine.optim.scheduler import OneCycleLR as _MMOneCycleLR

from ..registry import PARAM_SCHEDULERS


@PARAM_SCHEDULERS.register_module(name="OneCycleLR")
class OneCycleLR(_MMOneCycleLR):
    """``mmengine.optim.OneCycleLR`` (same arguments and schedule) whose ``state_dict`` holds plain data."""

    def __init__(self, optimizer, *args, anneal_strategy: str = "cos", **kwargs):
        super().__init__(optimizer, *args, anneal_strategy=anneal_strategy, **kwargs)
        self.anneal_strategy = anneal_strategy

    def state_dict(self) -> dict:
        state = super().state_dict()
        state.pop("anneal_func", None)
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "anneal_func"})
        self.anneal_func = self._annealing_cos if self.anneal_strategy == "cos" else self._annealing_linear
