"""Test-only hook (imported by the DDP test's config via custom_imports): every rank saves its weights."""
from pathlib import Path

import torch
from mmengine.hooks import Hook

from visionattn.registry import HOOKS


@HOOKS.register_module()
class SaveRankWeightsHook(Hook):
    def _save(self, runner, stage):
        model = getattr(runner.model, "module", runner.model)
        params = {k: v.detach().clone() for k, v in model.named_parameters()}
        torch.save(dict(params=params, world_size=runner.world_size),
                   Path(runner.work_dir) / f"{stage}_rank{runner.rank}.pt")

    def before_train(self, runner):
        self._save(runner, "initial")

    def after_train(self, runner):
        self._save(runner, "final")
