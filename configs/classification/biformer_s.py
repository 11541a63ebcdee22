# BiFormer-S ImageNet-1k recipe of the paper (DeiT/UniFormer style; rayleizhu/BiFormer main.py):
# 300 epochs, batch 1024 (8 GPUs x 128), AdamW lr 5e-4 x batch/512, wd 0.05, cosine to 1e-5 after
# 5 warm-up epochs, RandAugment rand-m9-mstd0.5-inc1, colour jitter 0.4, Mixup 0.8 / CutMix 1.0,
# label smoothing 0.1, random erasing 0.25, repeated augmentation x3, EMA 0.99996 (all from the _base_
# files), drop path 0.15 (official README/config). BiFormer-T and -B inherit this file.
# Difference from the official trainer: validation uses the EMA weights (mmengine EMAHook) where the
# official trainer reports the raw model.
# Train: python tools/train.py configs/classification/biformer_s.py [--amp]   (data: datasets/imagenet)
# On GPUs add --cfg-options model.cuda_graph=True: forward and backward replayed from CUDA graphs
# (biformer_small, H200, bf16, b64: 1,471 img/s vs 622 eager and 431 for the official code).
_base_ = [
    "../_base_/datasets/imagenet.py",
    "../_base_/runtime/default.py",
    "../_base_/models/deit.py",
    "../_base_/schedules/imagenet_300e.py",
]
model = dict(network="biformer_small", network_kwargs=dict(drop_path_rate=0.15))
