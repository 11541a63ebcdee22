"""Image-to-image restoration task model for mmengine (LQ -> HQ), any registered restoration network.

Batches come from :func:`restoration_collate`: ``inputs`` (B, C, H, W) in [0, 1] and
``data_samples`` a list of dicts holding at least ``gt`` (C, H, W). ``mode='loss'`` returns
``dict(loss=...)``; ``'predict'`` returns the samples with ``pred`` (C, H, W) added (clamped to
[0, 1]); ``'tensor'`` the raw network output.
"""
from typing import Dict, List, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn

from ..inference import restore_image
from ..registry import FUNCTIONS, MODELS
from .losses import build_loss
from .task_model import DataSamples, TaskModel


@FUNCTIONS.register_module()
def restoration_collate(batch: Sequence[dict]) -> dict:
    """Stack ``inputs`` into (B, C, H, W); keep ``data_samples`` as a list of dicts."""
    return dict(inputs=torch.stack([b["inputs"] for b in batch]), data_samples=[b["data_samples"] for b in batch])


@MODELS.register_module()
class ImageRestorer(TaskModel):
    """A restoration network for mmengine's Runner (a :class:`TaskModel`).

    Args:
        network: ``dict(name=<visionattn model name>, **constructor kwargs)`` (as the restoration
            configs write it), a name with ``network_kwargs``, or an nn.Module.
        loss: a registered loss (:mod:`visionattn.engine.losses`): ``'l1'`` (default),
            ``'charbonnier'``, ``'mse'``, or ``dict(type=..., **kwargs)``.
        pretrained / checkpoint: initial weights for the network (ours or the family's official format).
        cuda_graph: on CUDA, replay the network's training forward and backward from CUDA graphs
            (one capture per crop shape); the loss stays eager. Needs fixed-size crops.
    """

    def __init__(self, network: Union[str, dict, nn.Module], loss: Union[str, dict] = "l1",
                 checkpoint: Optional[str] = None, data_preprocessor: Optional[dict] = None, init_cfg=None,
                 cuda_graph: bool = False, network_kwargs: Optional[Mapping] = None, pretrained: bool = False):
        super().__init__(network, network_kwargs, pretrained=pretrained, checkpoint=checkpoint,
                         data_preprocessor=data_preprocessor, init_cfg=init_cfg, cuda_graph=cuda_graph)
        self.criterion = build_loss(loss)

    def loss(self, inputs: torch.Tensor, samples: DataSamples) -> Dict[str, torch.Tensor]:
        out = self.train_network()(inputs)
        return dict(loss=self.criterion(out, samples.stack("gt").to(out)))

    def predict(self, inputs: torch.Tensor, samples: DataSamples) -> List[dict]:
        out = restore_image(self.network, inputs)  # any image size: padded to the network's contract, cropped back
        return [dict(sample, pred=o.clamp(0, 1).detach()) for sample, o in zip(samples, out)]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints written while ImageRestorer kept its network as ``net`` load unchanged
        for key in [k for k in state_dict if k.startswith(prefix + "net.")]:
            state_dict[prefix + "network." + key[len(prefix) + 4:]] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
