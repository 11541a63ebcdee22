# Mask R-CNN + BiFormer-S, COCO 1x: the official BiFormer detection setup (README 48.1 box / 43.6 mask AP).
# Backbone n_win 16 with auto-padding, per-stage LayerNorm2d outputs, frozen BatchNorm statistics, drop path
# 0.2; AdamW lr 1e-4 betas (0.9, 0.999) wd 0.05 without decay on norm parameters, 12 epochs, steps at 8 and 11
# with 500 linear warm-up iterations, fp16 (loss scale 512); 8 GPUs x 2 images.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    '../_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    '../_base_/runtime/mmdet.py',
    '../_base_/models/biformer_backbone.py',
]

dims = [64, 128, 256, 512]
model = dict(
    backbone=dict(_base_.biformer_backbone, _delete_=True, n_win=16, drop_path_rate=0.2,
                  norm_eval=True),
    neck=dict(in_channels=dims))

optim_wrapper = dict(
    _delete_=True,
    type='AmpOptimWrapper',
    loss_scale=512.0,
    constructor='GroupedOptimWrapperConstructor',  # one group per distinct setting, not per tensor
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.0)}))
