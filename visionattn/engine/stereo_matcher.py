"""Stereo matching as an mmengine task model: a visionattn stereo network + MatchStereoLoss."""
from typing import Dict, List, Optional, Union

import torch
from mmengine.model import BaseModel

from ..cuda_graph import TrainingGraph
from ..inference import predict_stereo
from ..registry import MODELS
from .stereo_losses import MatchStereoLoss


@MODELS.register_module()
class StereoMatcher(BaseModel):
    """Wraps ``visionattn.create_model(network)`` (e.g. ``matchstereo_tiny``) for mmengine's Runner.

    Inputs: ``inputs`` uint8/float (B, 2, 3, H, W) [left, right] in [0, 255] (as the stereo
    datasets yield them); ``data_samples`` a dict of (B, 1, H, W) tensors ``disp``, ``valid``
    and optionally ``valid_noc``, ``disp_right``, ``valid_right``.

    ``mode='loss'`` -> the loss terms of :class:`MatchStereoLoss`; ``'predict'`` -> one dict per
    pair with ``pred_disp`` (H, W), ``consistency`` (H, W) and the ground truth for
    :class:`visionattn.evaluation.StereoMetric`; ``'tensor'`` -> the network's output dict.

    ``cuda_graph=True``: training steps on CUDA replay the network's forward and backward from CUDA
    graphs (:class:`visionattn.cuda_graph.TrainingGraph`, one capture per crop size), which removes
    the kernel-launch overhead that bounds MatchStereo's eager training step. Needs fixed-size
    crops and no gradient accumulation; evaluation and CPU runs stay eager. Training crops must
    be multiples of 32 and >= 192 (the network's input contract); ``'predict'`` takes any size
    through :func:`visionattn.inference.predict_stereo` (range check, padding, crop).
    """

    def __init__(self, network: str, network_kwargs: Optional[Dict] = None, pretrained: bool = False,
                 checkpoint: Optional[str] = None, loss: Optional[Dict] = None,
                 data_preprocessor: Optional[Dict] = None, init_cfg=None, cuda_graph: bool = False):
        from .. import create_model  # the factory imports every model family: not at module import

        super().__init__(data_preprocessor=data_preprocessor or dict(type="BaseDataPreprocessor"), init_cfg=init_cfg)
        self.network = create_model(network, pretrained=pretrained, checkpoint=checkpoint, **(network_kwargs or {}))
        self.criterion = MatchStereoLoss(**(loss or {}))
        self.train_graph = TrainingGraph(self.network) if cuda_graph else None

    def forward(self, inputs: torch.Tensor, data_samples: Optional[Dict] = None,
                mode: str = "tensor") -> Union[Dict, List[Dict]]:
        if inputs.dim() != 5 or inputs.shape[1] != 2:
            raise ValueError(f"inputs must be (B, 2, 3, H, W) stereo pairs, got {tuple(inputs.shape)}")
        if mode == "predict":  # any image size: padded and cropped back by the inference code
            out = predict_stereo(self.network, inputs[:, 0], inputs[:, 1])
        else:
            net = self.train_graph if self.train_graph is not None and mode == "loss" else self.network
            out = net(inputs[:, 0].float(), inputs[:, 1].float())
        if mode == "tensor":
            return out
        if mode == "loss":
            ds = data_samples
            return self.criterion(out, ds["disp"].float(), ds["valid"].bool(),
                                  ds["disp_right"].float() if "disp_right" in ds else None,
                                  ds["valid_right"].bool() if "valid_right" in ds else None)
        if mode == "predict":
            results = []
            for i in range(inputs.shape[0]):
                row = dict(pred_disp=out["disparity"][i, 0].detach(), consistency=out["consistency"][i, 0])
                if data_samples is not None:
                    row.update(gt_disp=data_samples["disp"][i, 0], valid=data_samples["valid"][i, 0].bool(),
                               valid_noc=data_samples["valid_noc"][i, 0].bool() if "valid_noc" in data_samples else None)
                results.append(row)
            return results
        raise ValueError(f"mode must be 'loss', 'predict' or 'tensor', got {mode!r}")
