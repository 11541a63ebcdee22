"""Save and restore the main process's random generators with each checkpoint.

mmengine re-seeds at start-up but does not restore the generator states on ``--resume``, so
mixup, random erasing, dropout and drop-path would draw different numbers after a restart
than in an uninterrupted run. Data workers need nothing: mmengine seeds them from
(seed, rank, worker id) each time a dataloader iterator starts, so their augmentations replay
exactly as long as ``persistent_workers`` is off.
"""
import random

import numpy as np
import torch
from mmengine.hooks import Hook

from ...registry import HOOKS


@HOOKS.register_module()
class RandomStateHook(Hook):
    """Stores python/numpy/torch(/cuda) generator states in ``checkpoint['meta']['random_state']``.

    They are restored only when resuming (not for ``load_from`` fine-tuning). Under DDP the
    checkpoint holds rank 0's states, which every rank then continues from.
    """

    priority = "VERY_LOW"

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        name, keys, pos, has_gauss, gauss = np.random.get_state()
        state = dict(python=random.getstate(), numpy=(name, keys.tolist(), pos, has_gauss, gauss),
                     torch=torch.get_rng_state())
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        checkpoint.setdefault("meta", {})["random_state"] = state

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        state = checkpoint.get("meta", {}).get("random_state")
        if state is None or not getattr(runner, "_resume", False):
            return
        python = state["python"]
        random.setstate((python[0], tuple(python[1]), python[2]))
        name, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
        torch.set_rng_state(state["torch"].cpu())
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
