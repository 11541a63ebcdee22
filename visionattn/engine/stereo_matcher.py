"""Stereo matching as an mmengine task model: a visionattn stereo network + MatchStereoLoss."""
from typing import Dict, List, Mapping, Optional, Tuple

import torch

from ..inference import predict_stereo
from ..registry import MODELS
from .losses import MatchStereoLoss
from .task_model import DataSamples, TaskModel


@MODELS.register_module()
class StereoMatcher(TaskModel):
    """A stereo network (e.g. ``matchstereo_tiny``) for mmengine's Runner (a :class:`TaskModel`).

    Inputs: ``inputs`` uint8/float (B, 2, 3, H, W) [left, right] in [0, 255] (as the stereo
    datasets yield them); each sample has (1, H, W) tensors ``disp``, ``valid`` and optionally
    ``valid_noc``, ``disp_right``, ``valid_right``.

    ``mode='loss'`` -> the loss terms of :class:`MatchStereoLoss` (``loss`` = its kwargs);
    ``'predict'`` -> one dict per pair with ``pred_disp`` (H, W), ``consistency`` (H, W) and the
    ground truth for :class:`visionattn.evaluation.StereoMetric`; ``'tensor'`` -> the network's
    output dict.

    ``cuda_graph=True``: training steps on CUDA replay the network's forward and backward from CUDA
    graphs (one capture per crop size), which removes the kernel-launch overhead that bounds
    MatchStereo's eager training step. Needs fixed-size crops and no gradient accumulation.
    Training crops must be multiples of 32 and >= 192 (the network's input contract); ``'predict'``
    takes any size through :func:`visionattn.inference.predict_stereo` (range check, padding, crop).
    """

    def __init__(self, network, network_kwargs: Optional[Mapping] = None, pretrained: bool = False,
                 checkpoint: Optional[str] = None, loss: Optional[Dict] = None,
                 data_preprocessor: Optional[Dict] = None, init_cfg=None, cuda_graph: bool = False):
        super().__init__(network, network_kwargs, pretrained=pretrained, checkpoint=checkpoint,
                         data_preprocessor=data_preprocessor, init_cfg=init_cfg, cuda_graph=cuda_graph)
        self.criterion = MatchStereoLoss(**(loss or {}))

    @staticmethod
    def _pair(inputs: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if inputs.dim() != 5 or inputs.shape[1] != 2:
            raise ValueError(f"inputs must be (B, 2, 3, H, W) stereo pairs, got {tuple(inputs.shape)}")
        return inputs[:, 0].float(), inputs[:, 1].float()

    def _forward(self, inputs: torch.Tensor) -> Dict:
        return self.network(*self._pair(inputs))

    def loss(self, inputs: torch.Tensor, samples: DataSamples) -> Dict[str, torch.Tensor]:
        out = self.train_network()(*self._pair(inputs))
        disp_right = samples.stack("disp_right", required=False)
        valid_right = samples.stack("valid_right", required=False)
        return self.criterion(out, samples.stack("disp").float(), samples.stack("valid").bool(),
                              None if disp_right is None else disp_right.float(),
                              None if valid_right is None else valid_right.bool())

    def predict(self, inputs: torch.Tensor, samples: DataSamples) -> List[Dict]:
        out = predict_stereo(self.network, *self._pair(inputs))  # any size: padded and cropped back
        results = []
        for i, sample in enumerate(samples):
            row = dict(pred_disp=out["disparity"][i, 0].detach(), consistency=out["consistency"][i, 0])
            if "disp" in sample:
                row.update(gt_disp=sample["disp"][0], valid=sample["valid"][0].bool(),
                           valid_noc=sample["valid_noc"][0].bool() if "valid_noc" in sample else None)
            results.append(row)
        return results
