# Semantic FPN + BiFormer-S, ADE20K 512x512, 80k iterations: the official BiFormer setup (README 48.9 mIoU).
# Backbone n_win 8 with auto-padding, per-stage LayerNorm2d outputs, drop path 0.15; AdamW lr 2e-4 wd 1e-4;
# cosine decay to 1e-8x with a 1000-iteration linear warm-up from 0.1x; test images resized to multiples of
# 32; 8 GPUs x 4 images. fp32 (see upernet_biformer_s_160k_ade20k.py; the official run used AMP, scale 512).
_base_ = [
    'mmseg::_base_/models/fpn_r50.py',
    '../_base_/datasets/ade20k.py',
    'mmseg::_base_/schedules/schedule_80k.py',
    '../_base_/runtime/mmseg.py',
    '../_base_/models/biformer_backbone.py',
]

dims = [64, 128, 256, 512]
model = dict(
    data_preprocessor=dict(size=(512, 512)),  # pad training crops to 512x512
    pretrained=None,
    backbone=dict(_base_.biformer_backbone, _delete_=True, n_win=8, drop_path_rate=0.15),
    neck=dict(in_channels=dims),
    decode_head=dict(num_classes=150))

test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 512), keep_ratio=True),
    dict(type='ResizeToMultiple', size_divisor=32),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(batch_size=4)
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-4, weight_decay=1e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=1000),
    dict(type='CosineAnnealingLR', T_max=80000, eta_min_ratio=1e-8, by_epoch=False, begin=0, end=80000),
]
# 8 GPUs x 4 images; `tools/train.py --auto-scale-lr` rescales lr to the actual total batch.
auto_scale_lr = dict(enable=False, base_batch_size=32)
