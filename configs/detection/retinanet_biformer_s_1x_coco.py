# RetinaNet + BiFormer-S, COCO 1x: the official BiFormer detection setup (paper Table 3, README 47.3 box AP
# after the authors' bug fix). Backbone n_win 16 with auto-padding, per-stage LayerNorm2d outputs, frozen
# BatchNorm statistics, drop path 0.2; AdamW lr 1e-4 wd 1e-4, 12 epochs, steps at 8 and 11 with 500
# linear warm-up iterations, fp16 with a static loss scale of 512; 8 GPUs x 2 images.
_base_ = [
    'mmdet::_base_/models/retinanet_r50_fpn.py',
    '../_base_/datasets/coco_detection.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    '../_base_/runtime/mmdet.py',
    '../_base_/models/biformer_backbone.py',
]

dims = [64, 128, 256, 512]
model = dict(
    backbone=dict(_base_.biformer_backbone, _delete_=True, n_win=16, drop_path_rate=0.2,
                  norm_eval=True),
    neck=dict(in_channels=dims, start_level=1, add_extra_convs='on_input', num_outs=5))

optim_wrapper = dict(
    _delete_=True,
    type='AmpOptimWrapper',
    loss_scale=512.0,
    optimizer=dict(type='AdamW', lr=1e-4, weight_decay=1e-4))

find_unused_parameters = True  # as the official config
