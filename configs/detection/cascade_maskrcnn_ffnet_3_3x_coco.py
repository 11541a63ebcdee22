# Cascade Mask R-CNN + FFNet-3, COCO 3x: as cascade_maskrcnn_ffnet_2_3x_coco.py with the FFNet-3 backbone
# and drop path 0.6 (README 52.8 box / 45.6 mask AP).
_base_ = './cascade_maskrcnn_ffnet_2_3x_coco.py'

dims = [96, 192, 384, 768]
model = dict(
    backbone=dict(arch='3', init_cfg=dict(checkpoint='ffnet_3.in1k'), drop_path_rate=0.6),
    neck=dict(in_channels=dims))
