"""Image classification as an mmengine task model: any timm/visionattn network + DeiT losses."""
from typing import Dict, List, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModel
from timm.data import Mixup
from timm.data.mixup import mixup_target
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from ..cuda_graph import TrainingGraph
from ..registry import MODELS


@MODELS.register_module()
class ImageClassifier(BaseModel):
    """Wraps ``visionattn.create_model(network, ...)`` for mmengine's Runner.

    Training loss: cross-entropy on timm Mixup/CutMix soft targets when ``mixup`` is given
    (label smoothing folded into the targets), else label-smoothed cross-entropy.

    Args:
        network: a name from ``visionattn.list_models()`` or any timm model name.
        num_classes: classifier outputs.
        network_kwargs: passed to the constructor (``drop_path_rate``, ``img_size``...).
        pretrained / checkpoint: initial weights, as in :func:`visionattn.create_model`.
        mixup: kwargs of ``timm.data.Mixup`` (``mixup_alpha``, ``cutmix_alpha``, ``prob``...),
            or None for no mixing. DeiT: ``dict(mixup_alpha=0.8, cutmix_alpha=1.0)``.
        label_smoothing: smoothing of the one-hot targets (DeiT: 0.1).
        data_preprocessor: normalisation/augmentation on the device; default
            ``ClassificationDataPreprocessor`` with ImageNet mean/std.
        cuda_graph: on CUDA, replay the network's training forward and backward from CUDA graphs
            (:class:`visionattn.cuda_graph.TrainingGraph`, one capture per batch shape) for
            networks whose eager step is launch-bound; mixing and the loss stay eager. Needs a
            fixed batch shape (``drop_last``) and no gradient accumulation.

    Inputs are (B, 3, H, W) float images, ``data_samples`` a dict with ``label`` (B,) int64.
    """

    def __init__(self, network: str, num_classes: int, network_kwargs: Optional[Dict] = None,
                 pretrained: bool = False, checkpoint: Optional[str] = None, mixup: Optional[Dict] = None,
                 label_smoothing: float = 0.0, data_preprocessor: Optional[Dict] = None,
                 cuda_graph: bool = False):
        from .. import create_model  # the factory imports every model family: not at module import

        preprocessor = data_preprocessor or dict(type="ClassificationDataPreprocessor")
        if isinstance(preprocessor, dict):  # our registry, whatever scope is current
            preprocessor = MODELS.build({"_scope_": "visionattn", **preprocessor})
        super().__init__(data_preprocessor=preprocessor)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.network = create_model(network, pretrained=pretrained, checkpoint=checkpoint,
                                    num_classes=num_classes, **(network_kwargs or {}))
        self.train_graph = TrainingGraph(self.network) if cuda_graph else None
        self.label_smoothing = label_smoothing
        self.mixup = Mixup(**mixup, label_smoothing=label_smoothing, num_classes=num_classes) if mixup else None
        if self.mixup is not None:
            self.criterion: nn.Module = SoftTargetCrossEntropy()
        elif label_smoothing > 0:
            self.criterion = LabelSmoothingCrossEntropy(label_smoothing)
        else:
            self.criterion = nn.CrossEntropyLoss()

    def init_weights(self) -> None:
        """Nothing to do: the network initialised itself, and loaded ``pretrained``/``checkpoint``
        weights, in its constructor. (mmengine's default would call a timm network's own
        ``init_weights`` again at the start of training and wipe loaded weights.)"""

    def forward(self, inputs: torch.Tensor, data_samples: Optional[Dict] = None,
                mode: str = "tensor") -> Union[torch.Tensor, Dict, List[Dict]]:
        """``mode='loss'`` -> dict(loss); ``'predict'`` -> one dict per image; ``'tensor'`` -> logits (B, num_classes)."""
        if mode == "loss":
            return self.loss(inputs, data_samples["label"])
        logits = self.network(inputs)
        if mode == "tensor":
            return logits
        if mode == "predict":
            scores = F.softmax(logits.float(), dim=1)
            labels = data_samples["label"] if data_samples is not None else [None] * len(scores)
            return [dict(pred_score=s, pred_label=int(s.argmax()), gt_label=None if g is None else int(g))
                    for s, g in zip(scores, labels)]
        raise ValueError(f"mode must be 'loss', 'predict' or 'tensor', got {mode!r}")

    def train_network(self):
        """The network as training steps call it: through its CUDA-graph replay with ``cuda_graph``."""
        return self.network if self.train_graph is None else self.train_graph

    def loss(self, inputs: torch.Tensor, labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        net = self.train_network()
        if self.mixup is not None:
            if len(inputs) % 2 == 0:  # timm mixes a batch with its flipped self: needs an even size
                inputs, targets = self.mixup(inputs, labels)
            else:
                targets = mixup_target(labels, self.num_classes, lam=1.0, smoothing=self.label_smoothing)
            return dict(loss=self.criterion(net(inputs), targets))
        return dict(loss=self.criterion(net(inputs), labels))
