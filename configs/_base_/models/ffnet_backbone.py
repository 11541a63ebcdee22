# FFNet as an mmdet/mmseg backbone (type='FFNet', registered by visionattn.engine.mm_backbone), as the
# official dense setups use it: the four stage outputs, each through a per-stage LayerNorm2d (stage_norm=True,
# the default), from the ImageNet weights of the model zoo (the official detection runs started from the
# distilled checkpoints: init_cfg=dict(type='Pretrained', checkpoint='ffnet_2.in1k_dist'), or a path).
# Dense recipes list this file in `_base_` and copy the dict, adding their drop path:
#     backbone=dict(_base_.ffnet_backbone, _delete_=True, drop_path_rate=0.2)
# (`_delete_` drops the ResNet settings of mmdet's/mmseg's model base); FFNet-3 recipes set arch and init_cfg.
ffnet_backbone = dict(
    type='FFNet',
    arch='2',
    out_indices=(0, 1, 2, 3),
    frozen_stages=-1,
    init_cfg=dict(type='Pretrained', checkpoint='ffnet_2.in1k'))
