# BiFormer as an mmdet/mmseg backbone (type='BiFormer', registered by visionattn.engine.mm_backbone), as the
# official dense setups use it: the four stage outputs, each through a per-stage LayerNorm2d (stage_norm=True,
# the default), from the ImageNet weights of the model zoo (init_cfg also takes a path or URL of our or the
# official release's file). Dense recipes list this file in `_base_` and copy the dict, adding their regions
# per side and drop path:
#     backbone=dict(_base_.biformer_backbone, _delete_=True, n_win=16, drop_path_rate=0.2)
# (`_delete_` drops the ResNet settings of mmdet's/mmseg's model base); BiFormer-B recipes set arch and init_cfg.
biformer_backbone = dict(
    type='BiFormer',
    arch='small',
    out_indices=(0, 1, 2, 3),
    frozen_stages=-1,
    init_cfg=dict(type='Pretrained', checkpoint='biformer_small.in1k'))
