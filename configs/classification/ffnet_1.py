# FFNet-1 ImageNet-1k recipe (Yun et al., arXiv 2406.02021; official train.py + README): input 256,
# 8 GPUs x 128, AdamW 1e-3, 300 + 20 epochs, RandAugment m9, colour jitter 0.4, random erasing 0.25,
# label smoothing 0.1, Mixup 0.2 / CutMix 1.0 (FFNet-1/2; 0.8 for 3/4), drop path 0.1, EMA 0.9995
# (validation uses the EMA weights). Train with --amp (official: native AMP).
# The classifier is the DeiT-style one of _base_/models/deit.py with FFNet's Mixup and EMA decay.
# Published: 81.3 top-1 (82.1 with hard distillation: ffnet_1_distill.py).
_base_ = ["../_base_/datasets/imagenet.py", "../_base_/runtime/default.py", "../_base_/models/deit.py",
          "../_base_/schedules/ffnet_300e_cooldown20.py"]

model = dict(network="ffnet_1", network_kwargs=dict(drop_path_rate=0.1), mixup=dict(mixup_alpha=0.2))
train_dataloader = dict(dataset=dict(transform=dict(input_size=256, color_jitter=0.4)))
val_dataloader = dict(dataset=dict(transform=dict(input_size=256, crop_pct=0.9)))
test_dataloader = val_dataloader
# mmengine momentum = 1 - decay: timm ModelEmaV2(decay=0.9995), updated in one multi-tensor op per step
# (visionattn.engine.ema). RandomStateHook and TrainingCurvesHook
# come from the runtime's default_hooks.
custom_hooks = [dict(type="EMAHook", ema_type="ForeachExponentialMovingAverage", momentum=5e-4, update_buffers=True,
                     priority="ABOVE_NORMAL")]
# Distributed runs normalise with the batch statistics of all GPUs (mmengine's Runner converts every
# BatchNorm to torch's SyncBatchNorm; one-process runs keep plain BatchNorm). Our choice: the official
# timm trainer keeps per-GPU statistics and averages the running statistics across GPUs once per
# epoch (--dist-bn reduce); here no such averaging exists, so without SyncBN the saved running
# statistics would be rank 0's alone. Set sync_bn = None for per-GPU statistics.
sync_bn = "torch"
