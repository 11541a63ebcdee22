# Semantic FPN + BiFormer-B, ADE20K 80k: as sfpn_biformer_s_80k_ade20k.py with the base backbone and drop
# path 0.3 (README 49.9 mIoU).
_base_ = './sfpn_biformer_s_80k_ade20k.py'

dims = [96, 192, 384, 768]
model = dict(
    backbone=dict(arch='base', init_cfg=dict(checkpoint='biformer_base.in1k'), n_win=8, drop_path_rate=0.3),
    neck=dict(in_channels=dims))
