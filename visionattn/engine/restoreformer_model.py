"""RestoreFormer / RestoreFormer++ training: the two stages as one GAN task model with several optimisers.

**Stage 1** (the HQ dictionary, ROHQD): the ``restoreformer_rohqd`` autoencoder reconstructs clean
faces (inputs = GT). Generator loss, in the network's [-1, 1] range::

    L_G = |gt - rec|_1 + LPIPS(gt, rec) + w_codebook L_VQ + [it >= disc_start] d_w (-mean D(rec))

with ``d_w = adaptive_gan_weight(L_rec, -mean D(rec), decoder.conv_out.weight) * disc_weight``
(``L_rec`` = the L1 + LPIPS part) and a PatchGAN ``D`` trained with the hinge loss from iteration
``disc_start`` on (official: 30,001, weight 0.8).

**Stage 2** (restoration): ``restoreformer`` / ``restoreformerpp`` with the codebook frozen, initialised
from the stage-1 dictionary (``dictionary=PATH``: every tensor of the dictionary network; the MHCA
blocks it lacks, e.g. RestoreFormer++'s 32x32 level, keep their initialisation), LQ inputs. Added to
``L_G`` after ``disc_start``: a vanilla GAN term from each of three facial-component discriminators
(left eye, right eye, mouth; GFPGAN's, on ``roi_align`` crops of the component boxes the dataset
gives) times ``component_weight``, and ``identity_weight`` x the ArcFace L1 identity loss. The
component discriminators train from ``disc_start`` with the BCE GAN loss. The decoder's attention
parameters get 10x the learning rate through the generator optimiser's ``paramwise_cfg``
(``RegexParamwiseConstructor``).

Optimisers (``optim_wrapper=dict(constructor='MultiOptimWrapperConstructor', ...)``): ``generator``
(the network), ``discriminator`` and, with components, ``left_eye``, ``right_eye``, ``mouth``; the
discriminators' ``step_schedule`` starts at ``disc_start`` unless the config says otherwise.

Batches (``restoration_collate``): ``inputs`` (B, 3, H, W) RGB in [0, 1]; ``data_samples`` with
``gt`` (3, H, W) and, for the component discriminators, ``components`` (3, 4) boxes. ``predict``
returns ``pred`` in [0, 1] (any image size: padded to the network's multiple and cropped back).

Deliberate differences from the official Lightning module: the discriminators score the
reconstruction the generator step made (detached) instead of running the generator again for
each optimiser (five forward passes per iteration officially); the component crops scale their
boxes with the image size (the official code scales the cropped values instead, identical at 512);
the discriminators' optimisers start stepping at ``disc_start`` instead of stepping on zero
gradients before it.
"""
import re
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn
from mmengine.optim import DefaultOptimWrapperConstructor

from ..inference import restore_image
from ..models.restoration.discriminators import FacialComponentDiscriminator, PatchGANDiscriminator
from ..registry import MODELS, OPTIM_WRAPPER_CONSTRUCTORS
from .losses import adaptive_gan_weight, build_loss
from .task_model import DataSamples, TaskModel

PARTS = ("left_eye", "right_eye", "mouth")


def crop_components(images: torch.Tensor, boxes: torch.Tensor, design_size: int = 512, eye_size: int = 80,
                    mouth_size: int = 120) -> Dict[str, torch.Tensor]:
    """Eye and mouth crops for the component discriminators.

    images (B, C, H, W); boxes (B, 3, 4) ``x1, y1, x2, y2`` pixels of the left eye, right eye, mouth
    -> ``{'left_eye': (B, C, e, e), 'right_eye': ..., 'mouth': (B, C, m, m)}`` by ``roi_align``
    (torchvision defaults), ``e = int(eye_size * W / design_size)``, likewise ``m``.
    """
    from torchvision.ops import roi_align

    if boxes.dim() != 3 or boxes.shape[1:] != (3, 4) or len(boxes) != len(images):
        raise ValueError(f"component boxes must be (B, 3, 4) for {len(images)} images; got {tuple(boxes.shape)}")
    ratio = images.shape[-1] / design_size
    e, m = max(1, int(eye_size * ratio)), max(1, int(mouth_size * ratio))
    index = torch.arange(len(images), device=images.device, dtype=images.dtype)[:, None]
    boxes = boxes.to(images)
    out = {}
    for k, part in enumerate(PARTS):
        rois = torch.cat([index, boxes[:, k]], dim=1)  # (B, 5): batch index, x1, y1, x2, y2
        out[part] = roi_align(images, rois, output_size=e if k < 2 else m)
    return out


def load_dictionary(network: nn.Module, path: str) -> List[str]:
    """Initialise a restoration network from a stage-1 dictionary checkpoint (ours: ``network.*``
    keys of a training checkpoint, or its work dir, whose ``last_checkpoint`` is read; official:
    ``vqvae.*`` of a Lightning file; or a bare state dict).

    Every tensor of the file must land, with its shape; the network's tensors the file lacks must
    all belong to attention blocks the dictionary network does not have (they keep their
    initialisation, as the official loader leaves them). Returns those keys.
    """
    from ..hub import extract_state_dict, read_checkpoint
    from .safe_globals import allow_mmengine_checkpoints

    allow_mmengine_checkpoints()
    if Path(path).is_dir():  # a stage-1 work dir: its last checkpoint
        pointer = Path(path) / "last_checkpoint"
        if not pointer.is_file():
            raise FileNotFoundError(f"dictionary {path!r} is a folder without a last_checkpoint file: train stage 1 "
                                    f"into it first, or pass a checkpoint file")
        path = pointer.read_text().strip()
    ckpt = read_checkpoint(path)
    raw = ckpt.get("state_dict", ckpt) if isinstance(ckpt.get("state_dict"), Mapping) else extract_state_dict(ckpt)
    for prefix in ("network.", "vqvae."):
        if any(k.startswith(prefix) for k in raw):
            raw = {k[len(prefix):]: v for k, v in raw.items() if k.startswith(prefix)}
            break
    own = network.state_dict()
    unexpected = sorted(k for k in raw if k not in own)
    wrong = sorted(k for k in raw if k in own and own[k].shape != raw[k].shape)
    missing = sorted(k for k in own if k not in raw)
    present_blocks = {k.split(".attn.")[0] for k in raw if ".attn." in k}
    not_new = [k for k in missing if ".attn." not in k or k.split(".attn.")[0] in present_blocks]
    if unexpected or wrong or not_new:
        raise RuntimeError(
            f"dictionary checkpoint {path!r} does not fit {type(network).__name__}: unexpected keys {unexpected[:6]}, "
            f"shape mismatches {[(k, tuple(raw[k].shape), tuple(own[k].shape)) for k in wrong[:4]]}, missing keys "
            f"outside new attention blocks {not_new[:6]}. Build the stage-2 network with the dictionary's sizes "
            f"(ch, ch_mult, n_embed...).")
    network.load_state_dict({**own, **raw})
    return missing


@MODELS.register_module()
class RestoreFormerGAN(TaskModel):
    """Both RestoreFormer training stages (module docstring).

    Args:
        network: ``restoreformer_rohqd`` (stage 1), ``restoreformerpp`` / ``restoreformer`` (stage 2),
            with ``network_kwargs``.
        dictionary: stage 2: the stage-1 checkpoint to start from (:func:`load_dictionary`).
        pixel_weight, perceptual, perceptual_weight: the L1 weight, the perceptual loss
            (``dict(type='LPIPSLoss', vgg_path=...)``; None: none) and its weight.
        codebook_weight: weight of the network's vector-quantisation loss.
        discriminator: PatchGAN kwargs (``width``, ``num_layers``). gan_loss: its objective.
        disc_weight, disc_start: the adaptive weight's factor and the first (0-based) iteration of
            the adversarial training.
        components: None (stage 1) or ``dict(width=64, weight=1.0, gan_loss='VanillaGANLoss',
            eye_size=80, mouth_size=120, design_size=512)``: the three component discriminators.
        identity: None or an identity loss (``dict(type='IdentityLoss', arcface_path=...)``);
            identity_weight: its weight.
        step_schedule: optimiser schedules (TaskModel); the discriminators default to ``start=disc_start``.
    """

    def __init__(self, network: Union[str, dict, nn.Module], network_kwargs: Optional[Mapping] = None, *,
                 dictionary: Optional[str] = None, pixel_weight: float = 1.0,
                 perceptual: Optional[Union[str, dict]] = None, perceptual_weight: float = 1.0,
                 codebook_weight: float = 1.0, discriminator: Optional[dict] = None,
                 gan_loss: Union[str, dict] = "HingeGANLoss", disc_weight: float = 0.8, disc_start: int = 30001,
                 components: Optional[dict] = None, identity: Optional[Union[str, dict]] = None,
                 identity_weight: float = 1.0, pretrained: bool = False, checkpoint: Optional[str] = None,
                 data_preprocessor: Optional[dict] = None, init_cfg: Optional[dict] = None,
                 step_schedule: Optional[Mapping[str, Mapping]] = None):
        self.optimizers = dict(generator="network", discriminator="discriminator")
        if components is not None:
            self.optimizers.update({part: f"{part}_discriminator" for part in PARTS})
        if disc_start < 0:
            raise ValueError(f"disc_start must be >= 0 (the first iteration with the adversarial loss); got {disc_start}")
        schedule = {name: dict(start=disc_start) for name in self.optimizers if name != "generator"}
        for name, s in (step_schedule or {}).items():
            schedule[name] = {**schedule.get(name, {}), **s}
        super().__init__(network, network_kwargs, pretrained=pretrained, checkpoint=checkpoint,
                         data_preprocessor=data_preprocessor, init_cfg=init_cfg, step_schedule=schedule)
        if not hasattr(self.network, "decoder") or not hasattr(self.network.decoder, "conv_out"):
            raise ValueError(f"RestoreFormerGAN trains RestoreFormer networks (restoreformer_rohqd, restoreformer, "
                             f"restoreformerpp); got {type(self.network).__name__}")
        self.new_dictionary_keys = load_dictionary(self.network, dictionary) if dictionary else []
        self.pixel_weight, self.perceptual_weight = pixel_weight, perceptual_weight
        self.codebook_weight, self.disc_weight, self.disc_start = codebook_weight, disc_weight, disc_start
        self.identity_weight = identity_weight
        self.perceptual = build_loss(perceptual) if perceptual is not None else None
        self.discriminator = PatchGANDiscriminator(**(discriminator or {}))
        self.gan_loss = build_loss(gan_loss)
        self.components = None
        if components is not None:
            cfg = dict(components)
            width = cfg.pop("width", 64)
            self.component_weight = cfg.pop("weight", 1.0)
            self.component_gan_loss = build_loss(cfg.pop("gan_loss", "VanillaGANLoss"))
            self.components = dict(design_size=cfg.pop("design_size", 512), eye_size=cfg.pop("eye_size", 80),
                                   mouth_size=cfg.pop("mouth_size", 120))
            if cfg:
                raise ValueError(f"unknown components options {sorted(cfg)}; use width, weight, gan_loss, "
                                 f"design_size, eye_size, mouth_size")
            for part in PARTS:
                setattr(self, f"{part}_discriminator", FacialComponentDiscriminator(width))
        self.identity = build_loss(identity) if identity is not None else None

    # --- the network in [-1, 1] -----------------------------------------------------------------

    @staticmethod
    def _to_network(x: torch.Tensor) -> torch.Tensor:
        return x * 2.0 - 1.0

    def _forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.network(self._to_network(inputs))

    def predict(self, inputs: torch.Tensor, samples: DataSamples) -> List[dict]:
        out = restore_image(self.network, inputs, value_range=(0, 1), network_range=(-1, 1))
        return [dict(sample, pred=o.clamp(0, 1).detach()) for sample, o in zip(samples, out)]

    # --- training ---------------------------------------------------------------------------------

    def _crops(self, images: torch.Tensor, samples: DataSamples) -> Dict[str, torch.Tensor]:
        return crop_components(images, samples.stack("components"), **self.components)

    def _generator_losses(self, inputs: torch.Tensor, samples: DataSamples, shared: dict) -> Dict[str, torch.Tensor]:
        iteration = self.train_iteration()
        gt = self._to_network(samples.stack("gt").to(inputs))
        rec, info = self.network(self._to_network(inputs), return_info=True)
        losses = {}
        pixel = self.pixel_weight * (rec - gt).abs().mean()
        losses["loss_g_pixel"] = reconstruction = pixel
        if self.perceptual is not None:
            losses["loss_g_perceptual"] = self.perceptual_weight * self.perceptual(rec, gt)
            reconstruction = reconstruction + losses["loss_g_perceptual"]
        losses["loss_g_codebook"] = self.codebook_weight * info["vq_loss"]
        if iteration >= self.disc_start:
            adversarial = self.gan_loss.generator_loss(self.discriminator(rec))
            weight = adaptive_gan_weight(reconstruction, adversarial, self.network.decoder.conv_out.weight)
            weight = weight * self.disc_weight
            losses["loss_g_adversarial"] = weight * adversarial
            losses["adaptive_weight"] = weight
        if iteration > self.disc_start:
            if self.components is not None:
                crops = self._crops(rec, samples)
                for part in PARTS:
                    logits, _ = getattr(self, f"{part}_discriminator")(crops[part])
                    losses[f"loss_g_{part}"] = self.component_weight * self.component_gan_loss.generator_loss(logits)
            if self.identity is not None:
                losses["loss_g_identity"] = self.identity_weight * self.identity(rec, gt)
        shared.update(rec=rec.detach(), gt=gt)
        return losses

    def _shared(self, inputs: torch.Tensor, samples: DataSamples, shared: dict) -> dict:
        if "rec" not in shared:  # the generator did not step this iteration
            with torch.no_grad():
                shared.update(rec=self._forward(inputs), gt=self._to_network(samples.stack("gt").to(inputs)))
        return shared

    def step_losses(self, name: str, inputs: torch.Tensor, samples: DataSamples, shared: dict) -> Dict[str, torch.Tensor]:
        if name == "generator":
            return self._generator_losses(inputs, samples, shared)
        shared = self._shared(inputs, samples, shared)
        if name == "discriminator":
            real, fake = self.discriminator(shared["gt"]), self.discriminator(shared["rec"])
            return dict(loss_d=self.gan_loss.discriminator_loss(real, fake), d_real=real.detach().mean(),
                        d_fake=fake.detach().mean())
        if "crops" not in shared:
            shared["crops"] = (self._crops(shared["gt"], samples), self._crops(shared["rec"], samples))
        real_crops, fake_crops = shared["crops"]
        disc = getattr(self, f"{name}_discriminator")
        real, _ = disc(real_crops[name])
        fake, _ = disc(fake_crops[name])
        return {f"loss_d_{name}": self.component_gan_loss.discriminator_loss(real, fake)}

    def loss(self, inputs: torch.Tensor, samples: DataSamples) -> Dict[str, torch.Tensor]:
        """The generator's loss terms (for evaluation-style calls; training goes through ``train_step``)."""
        return self._generator_losses(inputs, samples, {})


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class RegexParamwiseConstructor(DefaultOptimWrapperConstructor):
    """mmengine's default constructor plus learning-rate multipliers by parameter-name pattern:
    ``paramwise_cfg=dict(patterns={r'^decoder\\..*attn': dict(lr_mult=10.0)})`` gives every
    parameter whose name matches (``re.search``) that group's ``lr_mult``; the first matching
    pattern wins; the rest keep the base learning rate. Frozen parameters are left out."""

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: Optional[dict] = None):
        cfg = dict(paramwise_cfg or {})
        self.patterns = [(re.compile(p), dict(v)) for p, v in cfg.pop("patterns", {}).items()]
        for pattern, group in self.patterns:
            bad = sorted(set(group) - {"lr_mult", "decay_mult"})
            if bad:
                raise ValueError(f"pattern {pattern.pattern!r}: only lr_mult / decay_mult are supported, got {bad}")
        if cfg:
            raise ValueError(f"RegexParamwiseConstructor takes paramwise_cfg=dict(patterns=...); got {sorted(cfg)}")
        super().__init__(optim_wrapper_cfg, None)
        self.paramwise_cfg = {"patterns": self.patterns}  # non-empty: mmengine then calls add_params

    def add_params(self, params: List[dict], module: nn.Module, prefix: str = "", is_dcn_module=None) -> None:
        groups: Dict[int, dict] = {}
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            index = next((i for i, (p, _) in enumerate(self.patterns) if p.search(name)), -1)
            if index not in groups:
                group = dict(params=[])
                if index >= 0:
                    mult = self.patterns[index][1]
                    group["lr"] = self.base_lr * mult.get("lr_mult", 1.0)
                    if self.base_wd is not None:
                        group["weight_decay"] = self.base_wd * mult.get("decay_mult", 1.0)
                groups[index] = group
            groups[index]["params"].append(param)
        params.extend(groups[i] for i in sorted(groups))
