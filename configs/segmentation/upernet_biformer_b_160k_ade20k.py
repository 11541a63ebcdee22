# UperNet + BiFormer-B, ADE20K 160k: as upernet_biformer_s_160k_ade20k.py with the base backbone and drop
# path 0.4 (README 51.0 mIoU single scale).
_base_ = './upernet_biformer_s_160k_ade20k.py'

dims = [96, 192, 384, 768]
model = dict(
    backbone=dict(arch='base', init_cfg=dict(checkpoint='biformer_base.in1k'), n_win=8, drop_path_rate=0.4),
    decode_head=dict(in_channels=dims),
    auxiliary_head=dict(in_channels=dims[2]))
