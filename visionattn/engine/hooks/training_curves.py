"""Plot the training loss and validation metrics into ``<work_dir>/training_curves.png``."""
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from mmengine.dist import master_only
from mmengine.hooks import Hook

from ...registry import HOOKS


@HOOKS.register_module()
class TrainingCurvesHook(Hook):
    """Records the mean loss every ``interval`` iterations and every validation's scalar metrics,
    and redraws the PNG after each validation and at the end of training.

    The history travels in checkpoints (``meta['training_curves']``), so a resumed run keeps
    its curves.
    """

    priority = "LOW"

    def __init__(self, interval: int = 10, filename: str = "training_curves.png"):
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}")
        self.interval = interval
        self.filename = filename
        self.loss: List[Tuple[int, float]] = []  # (iteration, mean loss over the interval)
        self.metrics: List[Tuple[int, Dict[str, float]]] = []  # (iteration, metrics)
        self._sum, self._count = 0.0, 0

    def path(self, runner) -> Path:
        return Path(runner.work_dir) / self.filename

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs: Optional[dict] = None) -> None:
        if outputs and "loss" in outputs:
            loss = outputs["loss"]
            # summed where it lives: a device loss is read once per interval, not every iteration
            self._sum = self._sum + (loss.detach().float() if isinstance(loss, torch.Tensor) else float(loss))
            self._count += 1
        if self._count and (self.every_n_train_iters(runner, self.interval) or self.is_last_train_iter(runner)):
            self.loss.append((runner.iter + 1, float(self._sum) / self._count))
            self._sum, self._count = 0.0, 0

    def after_val_epoch(self, runner, metrics: Optional[Dict[str, float]] = None) -> None:
        scalars = {k: float(v) for k, v in (metrics or {}).items() if isinstance(v, (int, float))}
        if scalars:
            self.metrics.append((runner.iter, scalars))
        self.plot(self.path(runner))
        self.to_visualizer(runner)

    def after_train(self, runner) -> None:
        self.plot(self.path(runner))
        self.to_visualizer(runner)

    @master_only
    def to_visualizer(self, runner) -> None:
        """The PNG also goes to mmengine's visualizer backends (vis_data/, TensorBoard) as an image."""
        visualizer = getattr(runner, "visualizer", None)
        path = self.path(runner)
        if visualizer is None or not path.is_file() or not getattr(visualizer, "_vis_backends", None):
            return
        import numpy as np
        from PIL import Image

        with Image.open(path) as im:
            visualizer.add_image("training_curves", np.asarray(im.convert("RGB")), step=runner.iter)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint.setdefault("meta", {})["training_curves"] = dict(loss=self.loss, metrics=self.metrics)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        curves = checkpoint.get("meta", {}).get("training_curves")
        if curves and getattr(runner, "_resume", False):
            self.loss = [tuple(p) for p in curves["loss"]]
            self.metrics = [tuple(p) for p in curves["metrics"]]

    @master_only
    def plot(self, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = sorted({k for _, m in self.metrics for k in m})
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        if self.loss:
            axes[0].plot(*zip(*self.loss))
        axes[0].set(title="training loss", xlabel="iteration", ylabel="loss")
        for name in names:
            pts = [(it, m[name]) for it, m in self.metrics if name in m]
            axes[1].plot(*zip(*pts), marker="o", label=name)
        axes[1].set(title="validation", xlabel="iteration")
        if names:
            axes[1].legend()
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=80)
        plt.close(fig)
