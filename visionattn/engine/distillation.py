"""DeiT-style knowledge distillation with one head, as an :class:`ImageClassifier` option.

FFNet's "+KD" models (and DeiT's) train with loss = (1 - alpha) * L_cls + alpha * L_teacher, where
L_teacher is cross-entropy against the teacher's arg-max ("hard") or temperature-scaled KL
("soft"), the teacher seeing the same (mixed) images as the student.
"""
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from timm.data.mixup import mixup_target

from .classifier import ImageClassifier
from ..registry import MODELS


@MODELS.register_module()
class DistilledImageClassifier(ImageClassifier):
    """:class:`ImageClassifier` plus a frozen teacher.

    Args:
        teacher: a timm/visionattn model name; default the DeiT RegNetY-160 teacher
            (``regnety_160.deit_in1k``, the teacher of DeiT and FFNet).
        teacher_pretrained / teacher_checkpoint: the teacher's weights (as in ``create_model``).
        distillation_type: ``'hard'`` or ``'soft'``.
        alpha: weight of the distillation term. tau: temperature of ``'soft'``.
        Other arguments: as :class:`ImageClassifier`.

    The teacher is kept out of the module tree (not in checkpoints, EMA, DDP or the optimiser)
    and follows the inputs' device. Logged losses: ``loss_cls`` and ``loss_distill``.
    """

    def __init__(self, *args, teacher: str = "regnety_160.deit_in1k", teacher_pretrained: bool = True,
                 teacher_checkpoint: Optional[str] = None, distillation_type: str = "hard", alpha: float = 0.5,
                 tau: float = 1.0, teacher_kwargs: Optional[Dict] = None, **kwargs):
        from .. import create_model

        super().__init__(*args, **kwargs)
        if distillation_type not in ("hard", "soft"):
            raise ValueError(f"distillation_type must be 'hard' or 'soft', got {distillation_type!r}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        net = create_model(teacher, pretrained=teacher_pretrained, checkpoint=teacher_checkpoint,
                           num_classes=self.num_classes, **(teacher_kwargs or {}))
        self._teacher = [net.eval().requires_grad_(False)]  # a list: not a registered submodule
        self.distillation_type, self.alpha, self.tau = distillation_type, alpha, tau

    @property
    def teacher(self) -> torch.nn.Module:
        return self._teacher[0]

    def loss(self, inputs: torch.Tensor, labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        targets = labels
        if self.mixup is not None:
            if len(inputs) % 2 == 0:
                inputs, targets = self.mixup(inputs, labels)
            else:
                targets = mixup_target(labels, self.num_classes, lam=1.0, smoothing=self.label_smoothing)
        logits = self.train_network()(inputs)
        teacher = self.teacher.to(inputs.device).eval()
        with torch.no_grad():
            teacher_logits = teacher(inputs).float()
        if self.distillation_type == "hard":
            distill = F.cross_entropy(logits, teacher_logits.argmax(dim=1))
        else:
            t = self.tau
            distill = F.kl_div(F.log_softmax(logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                               reduction="sum", log_target=True) * (t * t) / logits.numel()
        return dict(loss_cls=(1 - self.alpha) * self.criterion(logits, targets), loss_distill=self.alpha * distill)
