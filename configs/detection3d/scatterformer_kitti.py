# ScatterFormer on KITTI 3D object: our recipe (none is published). The Waymo recipe's optimiser and one-cycle
# schedule (AdamW lr 0.006, wd 0.05, pct_start 0.1, div 100, gradient clip 10) over OpenPCDet's usual 80 KITTI
# epochs, GT sampling off for the last 4; the network is scatterformer_kitti (see docs/scatterformer.md).
_base_ = ["../_base_/datasets/kitti3d.py", "../_base_/schedules/lidar_onecycle.py", "../_base_/runtime/default.py"]
max_epochs = 80
param_scheduler = [
    dict(type="OneCycleLR", eta_max=0.006, pct_start=0.1, div_factor=100, final_div_factor=1e4,
         anneal_strategy="cos", by_epoch=True, begin=0, end=max_epochs, convert_to_iter_based=True),
    dict(type="CosineAnnealingMomentum", eta_min=0.85, by_epoch=True, begin=0, end=0.1 * max_epochs,
         convert_to_iter_based=True),
    dict(type="CosineAnnealingMomentum", eta_min=0.95, by_epoch=True, begin=0.1 * max_epochs, end=max_epochs,
         convert_to_iter_based=True),
]
train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=max_epochs, val_interval=max_epochs)
model = dict(type="ScatterFormerDetector", network=dict(name="scatterformer_kitti"))
custom_hooks = [dict(type="GTSamplingOffHook", last_epochs=4)]
