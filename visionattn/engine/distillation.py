"""DeiT-style knowledge distillation with one head, as an :class:`ImageClassifier` option.

FFNet's "+KD" models (and DeiT's) train with loss = (1 - alpha) * L_cls + alpha * L_teacher, where
L_cls is the classifier's own loss and L_teacher is :class:`~visionattn.engine.losses.DistillationLoss`
(cross-entropy against the teacher's arg-max, "hard", or temperature-scaled KL, "soft"), the teacher
seeing the same (mixed) images as the student.
"""
from typing import Dict, Optional

import torch

from ..registry import MODELS
from .classifier import ImageClassifier
from .losses import DistillationLoss
from .task_model import build_network


@MODELS.register_module()
class DistilledImageClassifier(ImageClassifier):
    """:class:`ImageClassifier` plus a frozen teacher.

    Args:
        teacher: a timm/visionattn model name; default the DeiT RegNetY-160 teacher
            (``regnety_160.deit_in1k``, the teacher of DeiT and FFNet).
        teacher_pretrained / teacher_checkpoint / teacher_kwargs: the teacher's weights and
            constructor arguments (as ``pretrained``/``checkpoint``/``network_kwargs``).
        distillation_type: ``'hard'`` or ``'soft'``.
        alpha: weight of the distillation term. tau: temperature of ``'soft'``.
        Other arguments: as :class:`ImageClassifier`.

    The teacher is kept out of the module tree (not in checkpoints, EMA, DDP or the optimiser)
    and follows the inputs' device. Logged losses: ``loss_cls`` and ``loss_distill``.
    """

    def __init__(self, *args, teacher: str = "regnety_160.deit_in1k", teacher_pretrained: bool = True,
                 teacher_checkpoint: Optional[str] = None, distillation_type: str = "hard", alpha: float = 0.5,
                 tau: float = 1.0, teacher_kwargs: Optional[Dict] = None, **kwargs):
        super().__init__(*args, **kwargs)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.distill = DistillationLoss(distillation_type, tau)
        net = build_network(teacher, teacher_kwargs, pretrained=teacher_pretrained, checkpoint=teacher_checkpoint,
                            num_classes=self.num_classes)
        self._teacher = [net.eval().requires_grad_(False)]  # a list: not a registered submodule
        self.distillation_type, self.alpha, self.tau = distillation_type, alpha, tau

    @property
    def teacher(self) -> torch.nn.Module:
        return self._teacher[0]

    def loss_terms(self, logits: torch.Tensor, targets: torch.Tensor, inputs: torch.Tensor) -> Dict[str, torch.Tensor]:
        loss_cls = super().loss_terms(logits, targets, inputs)["loss"]
        teacher = self.teacher.to(inputs.device).eval()
        with torch.no_grad():
            teacher_logits = teacher(inputs).float()
        return dict(loss_cls=(1 - self.alpha) * loss_cls,
                    loss_distill=self.alpha * self.distill(logits, teacher_logits))
