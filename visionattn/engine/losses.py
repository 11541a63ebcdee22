"""Every training loss of the task models, registered in :data:`visionattn.registry.LOSSES`.

Build one with :func:`build_loss` (``'l1'``, ``dict(type='CharbonnierLoss', eps=1e-3)``...);
``sorted(LOSSES.module_dict)`` lists them. Image losses take ``(pred, target)`` tensors of equal
shape and return a scalar; :class:`MatchStereoLoss` takes the stereo network's output dict and
returns its weighted terms.

- Pixel losses: ``L1Loss`` (alias ``l1``), ``MSELoss`` (``mse``), :class:`CharbonnierLoss`
  (``charbonnier``).
- Classification: ``CrossEntropyLoss``, timm's ``LabelSmoothingCrossEntropy`` and
  ``SoftTargetCrossEntropy`` (Mixup/CutMix targets), and :class:`DistillationLoss` (DeiT's
  hard/soft teacher term).
- Stereo: :class:`MatchStereoLoss`.
- Face-restoration GANs (RestoreFormer / RestoreFormer++): :class:`LPIPSLoss`,
  :class:`HingeGANLoss` and :class:`VanillaGANLoss` (``generator_loss`` / ``discriminator_loss``),
  :func:`adaptive_gan_weight` (VQGAN's balance of the adversarial term), :class:`IdentityLoss`
  (ArcFace features). The codebook loss is the network's own (``forward(x, return_info=True)``).
"""
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from ..registry import LOSSES

# Losses of torch and timm, by their class name (and the short names restoration configs use)
LOSSES.register_module(name=["L1Loss", "l1"], module=nn.L1Loss)
LOSSES.register_module(name=["MSELoss", "mse"], module=nn.MSELoss)
LOSSES.register_module(module=nn.CrossEntropyLoss)
LOSSES.register_module(module=LabelSmoothingCrossEntropy)
LOSSES.register_module(module=SoftTargetCrossEntropy)


def build_loss(loss: Union[str, dict, nn.Module]) -> nn.Module:
    """A loss module from a registered name (``'l1'``), ``dict(type=name, **kwargs)`` or a module."""
    if isinstance(loss, nn.Module):
        return loss
    cfg = dict(type=loss) if isinstance(loss, str) else dict(loss)
    name = cfg.get("type")
    if not isinstance(name, str) or name.split(".")[-1] not in LOSSES.module_dict:
        raise ValueError(f"unknown loss {name!r}; registered losses: {sorted(LOSSES.module_dict)} "
                         f"(a dict needs type=<one of them>)")
    return LOSSES.build(cfg)


@LOSSES.register_module(name=["CharbonnierLoss", "charbonnier"])
class CharbonnierLoss(nn.Module):
    """mean(sqrt((x - y)^2 + eps^2)): a smooth L1 (Restore-RWKV, Restormer). x, y: any equal shapes."""

    def __init__(self, eps: float = 1e-3):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.sqrt((x - y) ** 2 + self.eps ** 2).mean()


@LOSSES.register_module()
class DistillationLoss(nn.Module):
    """DeiT's teacher term: how far the student's logits are from a frozen teacher's.

    ``'hard'``: cross-entropy against the teacher's arg-max class. ``'soft'``: KL divergence of the
    temperature-``tau`` softmaxes, ``KL(teacher || student) * tau^2``, summed and divided by the
    number of logits (B * num_classes), as DeiT computes it.

    forward(student (B, C) logits, teacher (B, C) logits) -> scalar.
    """

    def __init__(self, distillation_type: str = "hard", tau: float = 1.0):
        super().__init__()
        if distillation_type not in ("hard", "soft"):
            raise ValueError(f"distillation_type must be 'hard' or 'soft', got {distillation_type!r}")
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        self.distillation_type, self.tau = distillation_type, tau

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if self.distillation_type == "hard":
            return F.cross_entropy(student, teacher.argmax(dim=1))
        t = self.tau
        return F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1),
                        reduction="sum", log_target=True) * (t * t) / student.numel()


# ---------------------------------------------------------------------------------------------
# Stereo matching


def downsample_disparity(disp: torch.Tensor, valid: torch.Tensor, stride: int):
    """Masked block average of (B, 1, H, W) disparity -> ((B, 1, H/s, W/s) px, valid)."""
    if stride == 1:
        return disp, valid
    B, C, H, W = disp.shape
    h, w = H // stride, W // stride  # as average pooling: a partial last block is dropped

    def block_sums(t: torch.Tensor) -> torch.Tensor:
        # one reduction (avg_pool2d's CUDA kernel takes ~0.2 ms for a 32 x 32 window over a few outputs)
        return t[..., :h * stride, :w * stride].reshape(B, C, h, stride, w, stride).sum((3, 5))
    v = valid.to(disp.dtype)
    num, den = block_sums(disp * v), block_sums(v)
    return num / den.clamp(min=1e-6), den > 0.5 * stride * stride


def occlusion_from_disparity(disp: torch.Tensor, valid: torch.Tensor, tau: float = 0.5) -> torch.Tensor:
    """Left-view occlusion (B, 1, H, W) bool from the left disparity alone (see :class:`MatchStereoLoss`)."""
    B, _, H, W = disp.shape
    x = torch.arange(W, device=disp.device, dtype=disp.dtype)
    target = torch.where(valid, x - disp, torch.full_like(disp, float("inf")))
    # min over x' > x: reverse cumulative min, shifted by one column
    rev_min = target.flip(-1).cummin(-1).values.flip(-1)
    right_min = torch.cat((rev_min[..., 1:], torch.full_like(rev_min[..., :1], float("inf"))), -1)
    return valid & (right_min < target + tau)


def _sample_right(right: torch.Tensor, disp_left: torch.Tensor) -> torch.Tensor:
    """right (B, 1, H, W) sampled at x - disp_left (B, 1, H, W), bilinear, border clamp."""
    B, _, H, W = right.shape
    x = torch.arange(W, device=right.device, dtype=right.dtype).view(1, 1, 1, W) - disp_left
    y = torch.arange(H, device=right.device, dtype=right.dtype).view(1, 1, H, 1).expand_as(x)
    grid = torch.stack((2 * x / (W - 1) - 1, 2 * y / (H - 1) - 1), -1)[:, 0]
    return F.grid_sample(right, grid, mode="bilinear", padding_mode="border", align_corners=True)


@LOSSES.register_module()
class MatchStereoLoss(nn.Module):
    """Sequence + initial cost-volume + consistency-constrained occlusion loss of MatchStereo.

    The official repository releases no training losses; these are designed from the paper.
    Notation: ``d^L``/``d^R`` ground-truth disparities of the left/right view (full resolution, px),
    ``V`` their validity masks; the model predicts stacked fields ``f`` (2B, h, w, 2) whose horizontal
    component is ``-d^L`` for the left half and ``+d^R`` for the right half.

    1. Sequence loss over the K intermediate fields (coarse to fine, last = full-resolution output):

       ``L_seq = sum_k gamma^(K-1-k) * mean_{p in V_s} | s * dhat_k(p) - d_s(p) |``

       where level k has stride ``s``, ``dhat_k`` is the predicted disparity in that level's pixels
       and ``d_s`` the ground truth at stride ``s`` (masked average over each s x s block, px of the
       full image); ``gamma`` defaults to 0.9. Both views are supervised where their ground truth
       exists (the right view only when ``disp_right`` is given).

    2. Initial cost-volume loss at 1/32 (the global correlation's probabilities ``P(d)``):

       ``L_cv = mean_{p in V_32, d_32(p) < D-1} -log( (1-a) P(floor d_32) + a P(floor d_32 + 1) + eps )``,
       ``a = d_32 - floor d_32`` (cross-entropy against the linearly split target bin).

    3. Consistency-constrained occlusion loss: non-occluded pixels must agree with the other view,

       ``L_occ = mean_{p in N} | dhat^L(p) - dhat^R(p - dhat^L(p)) |``  (full resolution),

       where ``N`` are the valid left pixels that the ground truth marks visible in the right view. A
       left pixel ``x`` is occluded when a pixel to its right lands on (within ``tau = 0.5`` px) or
       left of its match: ``min_{x' > x} (x' - d^L(x')) < x - d^L(x) + tau``, computed with a reverse
       cumulative minimum along each row. Occluded pixels are only supervised by ``L_seq``.

    Total: ``w_seq L_seq + w_cv L_cv + w_occ L_occ`` (weights configurable, default 1, 0.1, 0.2).

    Args:
        gamma: exponential weight of the intermediate fields (the final output has weight 1).
        seq_weight, cv_weight, occ_weight: weights of the three terms.
        max_disp: ground truth above this (px) is ignored.
        tau: tolerance (px) of the occlusion test on the ground truth.
    """

    def __init__(self, gamma: float = 0.9, seq_weight: float = 1.0, cv_weight: float = 0.1,
                 occ_weight: float = 0.2, max_disp: float = 700.0, tau: float = 0.5):
        super().__init__()
        self.gamma, self.seq_weight, self.cv_weight, self.occ_weight = gamma, seq_weight, cv_weight, occ_weight
        self.max_disp, self.tau = max_disp, tau
        self._weights: Dict[tuple, torch.Tensor] = {}

    def _step_weights(self, K: int, ks: List[int], like: torch.Tensor) -> torch.Tensor:
        """(n,) weights gamma^(K-1-k) of fields ``ks``, kept on the device (a host-to-device copy of a
        Python list in every step would wait for the GPU)."""
        key = (K, tuple(ks), like.device, like.dtype)
        if key not in self._weights:
            self._weights[key] = like.new_tensor([self.gamma ** (K - 1 - k) for k in ks])
        return self._weights[key]

    def forward(self, out: Dict, disp: torch.Tensor, valid: torch.Tensor,
                disp_right: Optional[torch.Tensor] = None, valid_right: Optional[torch.Tensor] = None
                ) -> Dict[str, torch.Tensor]:
        """out: the model's output dict; disp/valid (B, 1, H, W) at the model input size.

        Returns {'loss_seq', 'loss_cv', 'loss_occ'} (already weighted; mmengine sums them).
        """
        B, _, H, W = disp.shape
        valid = valid & (disp < self.max_disp) & torch.isfinite(disp)
        disp = torch.where(valid, disp, torch.zeros_like(disp))
        views = [(disp, valid, -1.0, slice(0, B))]
        if disp_right is not None:
            vr = valid_right & (disp_right < self.max_disp) & torch.isfinite(disp_right)
            views.append((torch.where(vr, disp_right, torch.zeros_like(disp_right)), vr, 1.0, slice(B, 2 * B)))

        fields = list(out["fields"]) + [out["field_up"]]
        K = len(fields)
        by_shape: Dict[Tuple[int, ...], List[int]] = {}  # the refinement steps of one resolution
        for k, field in enumerate(fields):
            by_shape.setdefault(tuple(field.shape), []).append(k)
        seq = disp.new_zeros(())
        for shape, ks in by_shape.items():
            # all fields of one resolution at once: (n, 2B, h, w) horizontal components, in px of that level
            stride = H // shape[1]
            level = torch.stack([fields[k][..., 0] for k in ks]) * stride
            weight = self._step_weights(K, ks, level)
            for gt, ok, sign, rows in views:
                gt_s, ok_s = downsample_disparity(gt, ok, stride)
                mask = ok_s[:, 0].to(level.dtype)  # (B, h, w)
                err = ((sign * level[:, rows] - gt_s[:, 0]).abs() * mask).sum((1, 2, 3))  # (n,) masked sums
                seq = seq + (weight * err).sum() / mask.sum().clamp(min=1.0)
        losses = {"loss_seq": self.seq_weight * seq}

        cv = out.get("init_cost_volume")
        if self.cv_weight and cv is not None:
            if cv.dim() != 4 or cv.shape[1] != cv.shape[3]:
                raise ValueError("the cost-volume loss is defined for stereo models (cost volume (2B, D, h, w))")
            D = cv.shape[1]
            term = disp.new_zeros(())
            for gt, ok, _, rows in views:
                gt_s, ok_s = downsample_disparity(gt, ok, H // cv.shape[2])
                gt_s = gt_s / (H // cv.shape[2])
                ok_s = ok_s & (gt_s < D - 1)
                lo = gt_s.floor().clamp(0, D - 2)
                a = gt_s - lo
                p = cv[rows]
                p_lo = p.gather(1, lo.long())
                p_hi = p.gather(1, lo.long() + 1)
                term = term - _masked_mean(torch.log((1 - a) * p_lo + a * p_hi + 1e-6), ok_s)
            losses["loss_cv"] = self.cv_weight * term

        if self.occ_weight:
            visible = valid & ~occlusion_from_disparity(disp, valid, self.tau)
            field = out["field_up"]
            pred_left = -field[:B, :, :, 0].unsqueeze(1)
            pred_right = field[B:, :, :, 0].unsqueeze(1)
            diff = (pred_left - _sample_right(pred_right, pred_left)).abs()
            losses["loss_occ"] = self.occ_weight * _masked_mean(diff, visible)
        return losses


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


# ---------------------------------------------------------------------------------------------
# Face-restoration GANs


@LOSSES.register_module()
class LPIPSLoss(nn.Module):
    """Mean LPIPS-VGG distance (Zhang et al. 2018, v0.1 heads) of (B, 3, H, W) RGB images in [-1, 1].

    The VGG16 trunk loads from ``vgg_path`` (torchvision's ``vgg16-397923af.pth``; default its
    torch-hub cache path) and never downloads; a missing file raises with the address to get it.
    Frozen (its parameters take no gradient and stay out of ``state_dict``). Needs the ``face`` extra.
    """

    def __init__(self, vgg_path: Optional[Union[str, Path]] = None, lin_path: Optional[Union[str, Path]] = None):
        super().__init__()
        from ..models.restoration.lpips_vgg import build_lpips_vgg

        # kept out of the module tree: a frozen metric network is not part of the model's checkpoint
        self._net = [build_lpips_vgg(vgg_path, lin_path)]

    @property
    def net(self) -> nn.Module:
        return self._net[0]

    def _apply(self, fn, *args, **kwargs):  # .to(device) / .half() reach the hidden network too
        self._net[0] = self._net[0]._apply(fn, *args, **kwargs)
        return super()._apply(fn, *args, **kwargs)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.net(pred, target).mean()


@LOSSES.register_module()
class HingeGANLoss(nn.Module):
    """VQGAN's PatchGAN objective: discriminator ``0.5 (mean relu(1 - D(real)) + mean relu(1 + D(fake)))``,
    generator ``-mean D(fake)``. ``forward(fake_logits)`` is the generator loss."""

    def generator_loss(self, fake: torch.Tensor) -> torch.Tensor:
        return -fake.mean()

    def discriminator_loss(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        return 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())

    def forward(self, fake: torch.Tensor) -> torch.Tensor:
        return self.generator_loss(fake)


@LOSSES.register_module()
class VanillaGANLoss(nn.Module):
    """Binary cross-entropy GAN objective (BasicSR's ``GANLoss('vanilla')``, GFPGAN's component
    discriminators): discriminator ``BCE(D(real), 1) + BCE(D(fake), 0)``, generator ``BCE(D(fake), 1)``
    (means over all logits). ``forward(fake_logits)`` is the generator loss."""

    def generator_loss(self, fake: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))

    def discriminator_loss(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        return (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))

    def forward(self, fake: torch.Tensor) -> torch.Tensor:
        return self.generator_loss(fake)


def adaptive_gan_weight(reconstruction_loss: torch.Tensor, generator_loss: torch.Tensor, last_layer: torch.Tensor,
                        max_weight: float = 1e4) -> torch.Tensor:
    """VQGAN's adaptive weight of the adversarial term (detached scalar):
    ``clamp(||grad_w L_rec|| / (||grad_w L_G|| + 1e-4), 0, max_weight)`` with ``w`` the generator's
    last layer (RestoreFormer: ``decoder.conv_out.weight``). Both losses keep their graphs."""
    g_rec = torch.autograd.grad(reconstruction_loss, last_layer, retain_graph=True)[0]
    g_gan = torch.autograd.grad(generator_loss, last_layer, retain_graph=True)[0]
    return torch.clamp(g_rec.norm() / (g_gan.norm() + 1e-4), 0.0, max_weight).detach()


@LOSSES.register_module()
class IdentityLoss(nn.Module):
    """L1 distance of ArcFace embeddings: ``mean |A(gray(pred)) - sg[A(gray(target))]|``.

    ``gray``: 0.2989 R + 0.5870 G + 0.1140 B of (B, 3, H, W) RGB images, bilinear to 128 x 128
    (GFPGAN / RestoreFormer). The images enter ArcFace in the range they are given (the official
    training passes [-1, 1]). ``arcface_path``: ``arcface_resnet18.pth``; ``arcface_kwargs`` build a
    smaller stand-in of the same layout. The ArcFace network is frozen, in eval mode, and kept out
    of ``state_dict``.
    """

    def __init__(self, arcface_path: Union[str, Path], arcface_kwargs: Optional[dict] = None):
        super().__init__()
        from ..models.restoration.arcface import load_arcface

        self._net = [load_arcface(arcface_path, **(arcface_kwargs or {}))]

    @property
    def net(self) -> nn.Module:
        return self._net[0]

    def _apply(self, fn, *args, **kwargs):
        self._net[0] = self._net[0]._apply(fn, *args, **kwargs)
        return super()._apply(fn, *args, **kwargs)

    def train(self, mode: bool = True):  # ArcFace stays in eval mode (BatchNorm statistics, dropout)
        super().train(mode)
        self.net.eval()
        return self

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        from ..models.restoration.arcface import gray_resize

        return self.net(gray_resize(images, self.net.input_size))

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(self.embed(pred), self.embed(target).detach())
