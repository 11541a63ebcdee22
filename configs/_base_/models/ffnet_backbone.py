# FFNet as an mmdet/mmseg backbone (visionattn's VisionAttnBackbone wrapper), as the official dense setups
# use it: the four stage outputs, each through a per-stage LayerNorm2d, from ImageNet weights (the official
# detection runs started from the distilled checkpoints: checkpoint='path/to/ffnet_2_distillation.pth.tar').
# Dense recipes list this file in `_base_` and copy the dict, adding their drop path:
#     backbone=dict(_base_.ffnet_backbone, _delete_=True, model_kwargs=dict(drop_path_rate=0.2))
# (`_delete_` drops the ResNet settings of mmdet's/mmseg's model base); FFNet-3 recipes set model_name.
ffnet_backbone = dict(
    type='VisionAttnBackbone',
    model_name='ffnet_2',
    out_indices=(0, 1, 2, 3),
    pretrained=True,  # ImageNet weights from the model zoo; or checkpoint='path/to/ffnet_2.pth.tar'
    feature_kwargs=dict(stage_norm=True))  # per-stage LayerNorm2d on the outputs (dense-only layers)
