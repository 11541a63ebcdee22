# UperNet + FFNet-3, ADE20K 160k: as upernet_ffnet_2_160k_ade20k.py with the FFNet-3 backbone, drop path 0.3
# and layer-wise lr decay 0.9 over 12 layers (README 49.6 mIoU single scale).
_base_ = './upernet_ffnet_2_160k_ade20k.py'

dims = [96, 192, 384, 768]
model = dict(
    backbone=dict(arch='3', init_cfg=dict(checkpoint='ffnet_3.in1k'), drop_path_rate=0.3),
    decode_head=dict(in_channels=dims),
    auxiliary_head=dict(in_channels=dims[2]))
optim_wrapper = dict(paramwise_cfg=dict(decay_rate=0.9, num_layers=12))
