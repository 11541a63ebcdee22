"""Image-to-image restoration task model for mmengine (LQ -> HQ), any registered restoration network.

Batches come from :func:`restoration_collate`: ``inputs`` (B, C, H, W) in [0, 1] and
``data_samples`` a list of dicts holding at least ``gt`` (C, H, W). ``mode='loss'`` returns
``dict(loss=...)``; ``'predict'`` returns the samples with ``pred`` (C, H, W) added (clamped to
[0, 1]); ``'tensor'`` the raw network output.
"""
from typing import List, Optional, Sequence, Union

import torch
import torch.nn as nn
from mmengine.model import BaseModel

from ..cuda_graph import TrainingGraph
from ..inference import restore_image
from ..registry import FUNCTIONS, MODELS


class CharbonnierLoss(nn.Module):
    """mean(sqrt((x - y)^2 + eps^2)): a smooth L1."""

    def __init__(self, eps: float = 1e-3):
        super().__init__()
        self.eps = eps

    def forward(self, x, y):
        return torch.sqrt((x - y) ** 2 + self.eps ** 2).mean()


LOSSES = dict(l1=nn.L1Loss, mse=nn.MSELoss, charbonnier=CharbonnierLoss)


@FUNCTIONS.register_module()
def restoration_collate(batch: Sequence[dict]) -> dict:
    """Stack ``inputs`` into (B, C, H, W); keep ``data_samples`` as a list of dicts."""
    return dict(inputs=torch.stack([b["inputs"] for b in batch]), data_samples=[b["data_samples"] for b in batch])


@MODELS.register_module()
class ImageRestorer(BaseModel):
    """Args:
        network: dict(name=<visionattn model name>, **constructor kwargs), or an nn.Module.
        loss: 'l1' (default), 'charbonnier' or 'mse' (or dict(type=..., **kwargs)).
        checkpoint: optional weights for the network (ours or the family's official format).
        cuda_graph: on CUDA, replay the network's training forward and backward from CUDA graphs
            (:class:`visionattn.cuda_graph.TrainingGraph`, one capture per crop shape); the loss
            stays eager. Needs fixed-size crops and no gradient accumulation.
    """

    def __init__(self, network: Union[dict, nn.Module], loss: Union[str, dict] = "l1",
                 checkpoint: Optional[str] = None, data_preprocessor: Optional[dict] = None, init_cfg=None,
                 cuda_graph: bool = False):
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if isinstance(network, nn.Module):
            self.net = network
        else:
            from ..factory import create_model

            cfg = dict(network)
            self.net = create_model(cfg.pop("name"), checkpoint=checkpoint, **cfg)
        loss_cfg = dict(type=loss) if isinstance(loss, str) else dict(loss)
        name = loss_cfg.pop("type")
        if name not in LOSSES:
            raise ValueError(f"unknown restoration loss {name!r}; choose from {sorted(LOSSES)}")
        self.loss_fn = LOSSES[name](**loss_cfg)
        self.train_graph = TrainingGraph(self.net) if cuda_graph else None

    def forward(self, inputs: torch.Tensor, data_samples: Optional[List[dict]] = None, mode: str = "tensor"):
        if mode == "predict":  # any image size: padded to the network's contract and cropped back
            out = restore_image(self.net, inputs)
        else:
            out = (self.train_graph if self.train_graph is not None and mode == "loss" else self.net)(inputs)
        if mode == "tensor":
            return out
        if data_samples is None:
            raise ValueError(f"mode={mode!r} needs data_samples with 'gt'")
        if mode == "loss":
            gt = torch.stack([s["gt"] for s in data_samples]).to(out)
            return dict(loss=self.loss_fn(out, gt))
        if mode == "predict":
            return [dict(s, pred=o.clamp(0, 1).detach()) for s, o in zip(data_samples, out)]
        raise ValueError(f"unknown mode {mode!r}; use 'loss', 'predict' or 'tensor'")

    def val_step(self, data) -> list:
        data = self.data_preprocessor(data, False)
        return self._run_forward(data, mode="predict")

    def test_step(self, data) -> list:
        return self.val_step(data)
