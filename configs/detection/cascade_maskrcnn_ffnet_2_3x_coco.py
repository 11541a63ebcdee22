# Cascade Mask R-CNN + FFNet-2, COCO 3x with multi-scale + crop training: the official FFNet detection setup
# (README 51.8 box / 44.9 mask AP). Per-stage LayerNorm2d outputs, drop path 0.35, BatchNorms trained (SyncBN
# when distributed); 4-conv 1-fc GIoU box heads with SyncBN; AdamW lr 1e-4 wd 0.05 with layer-wise lr decay
# 0.8 over 12 layers (grouped as the official FFNet constructor did: rule='ffnet'), 36 epochs, steps
# at 27 and 33 with 500 linear warm-up iterations; 8 GPUs x 2 images. The official runs started from the
# distilled (KD) ImageNet checkpoints: set init_cfg=dict(type='Pretrained', checkpoint='ffnet_2.in1k_dist').
_base_ = [
    'mmdet::_base_/models/cascade-mask-rcnn_r50_fpn.py',
    '../_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    '../_base_/runtime/mmdet.py',
    '../_base_/models/ffnet_backbone.py',
]

dims = [88, 176, 352, 704]
sync_bn = 'torch'  # BatchNorm -> SyncBatchNorm in distributed runs (mmengine's Runner; a no-op on 1 process)
model = dict(
    backbone=dict(_base_.ffnet_backbone, _delete_=True, drop_path_rate=0.35, norm_eval=False),
    neck=dict(in_channels=dims),
    roi_head=dict(bbox_head=[
        dict(
            type='Shared4Conv1FCBBoxHead',
            in_channels=256,
            conv_out_channels=256,
            fc_out_channels=1024,
            roi_feat_size=7,
            num_classes=80,
            bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.], target_stds=stds),
            reg_class_agnostic=False,
            reg_decoded_bbox=True,
            norm_cfg=dict(type='SyncBN', requires_grad=True),
            loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
            loss_bbox=dict(type='GIoULoss', loss_weight=10.0))
        for stds in ([0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1], [0.033, 0.033, 0.067, 0.067])
    ]))

# Multi-scale training with random crops (DETR / Sparse R-CNN style), as the official config.
_scales = [(480, 1333), (512, 1333), (544, 1333), (576, 1333), (608, 1333), (640, 1333), (672, 1333),
           (704, 1333), (736, 1333), (768, 1333), (800, 1333)]
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='RandomChoice', transforms=[
        [dict(type='RandomChoiceResize', scales=_scales, keep_ratio=True)],
        [dict(type='RandomChoiceResize', scales=[(400, 1333), (500, 1333), (600, 1333)], keep_ratio=True),
         dict(type='RandomCrop', crop_type='absolute_range', crop_size=(384, 600), allow_negative_crop=True),
         dict(type='RandomChoiceResize', scales=_scales, keep_ratio=True)],
    ]),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(batch_size=2, dataset=dict(pipeline=train_pipeline))

max_epochs = 36
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[27, 33], gamma=0.1),
]
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    constructor='LayerDecayOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(decay_rate=0.8, num_layers=12, rule='ffnet'))
default_hooks = dict(checkpoint=dict(interval=1, max_keep_ckpts=5, save_last=True, save_best='auto'))
