# UperNet + FFNet-2, ADE20K 512x512, 160k iterations: the official FFNet setup (README 47.1 mIoU single scale).
# Per-stage LayerNorm2d outputs, drop path 0.2, BatchNorms trained (SyncBN when distributed); AdamW lr 1e-4
# wd 0.05 without decay on 1-D parameters, layer-wise lr decay 1.0 (none) over 9 layers; poly decay (power 1,
# to 0) times a 1500-iteration linear warm-up from 1e-6; test images resized to multiples of 32; 8 GPUs x 2.
_base_ = [
    'mmseg::_base_/models/upernet_r50.py',
    '../_base_/datasets/ade20k.py',
    'mmseg::_base_/schedules/schedule_160k.py',
    '../_base_/runtime/mmseg.py',
    '../_base_/models/ffnet_backbone.py',
]

dims = [88, 176, 352, 704]
sync_bn = 'torch'  # BatchNorm -> SyncBatchNorm in distributed runs (mmengine's Runner; a no-op on 1 process)
model = dict(
    data_preprocessor=dict(size=(512, 512)),  # pad training crops to 512x512
    pretrained=None,
    backbone=dict(_base_.ffnet_backbone, _delete_=True, drop_path_rate=0.2),
    decode_head=dict(in_channels=dims, num_classes=150),
    auxiliary_head=dict(in_channels=dims[2], num_classes=150))

test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 512), keep_ratio=True),
    dict(type='ResizeToMultiple', size_divisor=32),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(batch_size=2)
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    constructor='LayerDecayOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(decay_rate=1.0, num_layers=9, rule='ffnet'))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=0, end=160000),
]
default_hooks = dict(checkpoint=dict(interval=4000, max_keep_ckpts=20, save_best='mIoU'))
train_cfg = dict(val_interval=4000)
# 8 GPUs x 2 images; `tools/train.py --auto-scale-lr` rescales lr to the actual total batch.
auto_scale_lr = dict(enable=False, base_batch_size=16)
