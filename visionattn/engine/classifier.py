"""Image classification as an mmengine task model: any timm/visionattn network + DeiT losses."""
from typing import Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.data.mixup import mixup_target

from ..registry import MODELS
from .losses import build_loss
from .task_model import DataSamples, TaskModel


@MODELS.register_module()
class ImageClassifier(TaskModel):
    """A classification network for mmengine's Runner (a :class:`TaskModel`).

    Training loss: cross-entropy on timm Mixup/CutMix soft targets when ``mixup`` is given
    (label smoothing folded into the targets), else label-smoothed cross-entropy.

    Args:
        network: a name from ``visionattn.list_models()`` or any timm model name (or
            ``dict(name=..., **kwargs)``, or a built module).
        num_classes: classifier outputs.
        network_kwargs: passed to the constructor (``drop_path_rate``, ``img_size``...).
        pretrained / checkpoint: initial weights, as in :func:`visionattn.create_model`.
        mixup: kwargs of ``timm.data.Mixup`` (``mixup_alpha``, ``cutmix_alpha``, ``prob``...),
            or None for no mixing. DeiT: ``dict(mixup_alpha=0.8, cutmix_alpha=1.0)``.
        label_smoothing: smoothing of the one-hot targets (DeiT: 0.1).
        data_preprocessor: normalisation/augmentation on the device; default
            ``ClassificationDataPreprocessor`` with ImageNet mean/std.
        cuda_graph: on CUDA, replay the network's training forward and backward from CUDA graphs
            (one capture per batch shape) for networks whose eager step is launch-bound; mixing and
            the loss stay eager. Needs a fixed batch shape (``drop_last``).

    Inputs are (B, 3, H, W) float images; each sample has ``label`` (int). ``predict`` gives per
    image ``pred_score`` (num_classes,), ``pred_label`` and ``gt_label`` (None without labels).
    """

    default_data_preprocessor = dict(type="ClassificationDataPreprocessor")

    def __init__(self, network, num_classes: int, network_kwargs: Optional[Mapping] = None,
                 pretrained: bool = False, checkpoint: Optional[str] = None, mixup: Optional[Dict] = None,
                 label_smoothing: float = 0.0, data_preprocessor: Optional[Dict] = None,
                 cuda_graph: bool = False, init_cfg: Optional[Dict] = None):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        super().__init__(network, network_kwargs, pretrained=pretrained, checkpoint=checkpoint,
                         data_preprocessor=data_preprocessor, init_cfg=init_cfg, cuda_graph=cuda_graph,
                         task_kwargs=dict(num_classes=num_classes))
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.mixup = Mixup(**mixup, label_smoothing=label_smoothing, num_classes=num_classes) if mixup else None
        if self.mixup is not None:
            self.criterion = build_loss("SoftTargetCrossEntropy")
        elif label_smoothing > 0:
            self.criterion = build_loss(dict(type="LabelSmoothingCrossEntropy", smoothing=label_smoothing))
        else:
            self.criterion = build_loss("CrossEntropyLoss")

    def predict(self, inputs: torch.Tensor, samples: DataSamples) -> List[Dict]:
        scores = F.softmax(self.network(inputs).float(), dim=1)
        return [dict(pred_score=score, pred_label=int(score.argmax()),
                     gt_label=int(sample["label"]) if "label" in sample else None)
                for score, sample in zip(scores, samples)]

    def mix(self, inputs: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets): Mixup/CutMix images and soft targets with ``mixup``, else the labels."""
        if self.mixup is None:
            return inputs, labels
        if len(inputs) % 2 == 0:  # timm mixes a batch with its flipped self: needs an even size
            return self.mixup(inputs, labels)
        return inputs, mixup_target(labels, self.num_classes, lam=1.0, smoothing=self.label_smoothing)

    def loss(self, inputs: torch.Tensor, samples: DataSamples) -> Dict[str, torch.Tensor]:
        inputs, targets = self.mix(inputs, samples.stack("label"))
        logits = self.train_network()(inputs)
        return self.loss_terms(logits, targets, inputs)

    def loss_terms(self, logits: torch.Tensor, targets: torch.Tensor, inputs: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Loss of the (mixed) batch: logits (B, num_classes), targets (B,) labels or (B, num_classes)
        soft targets, inputs the (mixed) images the logits came from."""
        return dict(loss=self.criterion(logits, targets))
