# BiFormer as an mmdet/mmseg backbone (visionattn's VisionAttnBackbone wrapper), as the official dense
# setups use it: the four stage outputs, each through a per-stage LayerNorm2d, from ImageNet weights.
# Dense recipes list this file in `_base_` and copy the dict, adding their regions per side and drop path:
#     backbone=dict(_base_.biformer_backbone, _delete_=True, model_kwargs=dict(n_win=16, drop_path_rate=0.2))
# (`_delete_` drops the ResNet settings of mmdet's/mmseg's model base); BiFormer-B recipes set model_name.
biformer_backbone = dict(
    type='VisionAttnBackbone',
    model_name='biformer_small',
    out_indices=(0, 1, 2, 3),
    pretrained=True,  # ImageNet weights from the model zoo; or checkpoint='path/to/biformer_small.pth'
    feature_kwargs=dict(out_norm=True))  # per-stage LayerNorm2d on the outputs (dense-only layers)
