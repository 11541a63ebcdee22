# UperNet + BiFormer-S, ADE20K 512x512, 160k iterations: the official BiFormer setup (README 49.8 mIoU single
# scale). Backbone n_win 8 with auto-padding, per-stage LayerNorm2d outputs, drop path 0.3; AdamW lr 6e-5
# betas (0.9, 0.999) wd 0.01 without decay on norm parameters; poly decay (power 1, to 0) over all 160k
# iterations times a 1500-iteration linear warm-up from 1e-6 (as mmcv 1.x applied it); 8 GPUs x 2 images.
# fp32: the official AMP runs hit NaN losses around 32k iterations (upstream issue #47); set
# optim_wrapper.type='AmpOptimWrapper', loss_scale=512. to trade that for speed.
_base_ = [
    'mmseg::_base_/models/upernet_r50.py',
    '../_base_/datasets/ade20k.py',
    'mmseg::_base_/schedules/schedule_160k.py',
    '../_base_/runtime/mmseg.py',
    '../_base_/models/biformer_backbone.py',
]

dims = [64, 128, 256, 512]
model = dict(
    data_preprocessor=dict(size=(512, 512)),  # pad training crops to 512x512
    pretrained=None,
    backbone=dict(_base_.biformer_backbone, _delete_=True, n_win=8, drop_path_rate=0.3),
    decode_head=dict(in_channels=dims, num_classes=150),
    auxiliary_head=dict(in_channels=dims[2], num_classes=150))

train_dataloader = dict(batch_size=2)
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    constructor='GroupedOptimWrapperConstructor',  # one group per distinct setting, not per tensor
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.0)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=0, end=160000),
]
# 8 GPUs x 2 images; `tools/train.py --auto-scale-lr` rescales lr to the actual total batch.
auto_scale_lr = dict(enable=False, base_batch_size=16)
