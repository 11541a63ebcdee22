# RetinaNet + BiFormer-B, COCO 1x: as retinanet_biformer_s_1x_coco.py with the base backbone and drop path 0.3
# (README 47.1 box AP).
_base_ = './retinanet_biformer_s_1x_coco.py'

dims = [96, 192, 384, 768]
model = dict(
    backbone=dict(arch='base', init_cfg=dict(checkpoint='biformer_base.in1k'), n_win=16, drop_path_rate=0.3),
    neck=dict(in_channels=dims))
