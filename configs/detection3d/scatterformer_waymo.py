# ScatterFormer on Waymo (OpenPCDet's processed layout): the official recipe of tools/cfgs/waymo_models/
# scatterformer.yaml: AdamW one-cycle lr 0.006, wd 0.05, 24 epochs, batch 4 per GPU (the paper: 8 GPUs),
# gradient clip 10, GT sampling switched off for the last 4 epochs. Losses: CenterHead's (ScatterFormerDetector).
_base_ = ["../_base_/datasets/waymo_lidar.py", "../_base_/schedules/lidar_onecycle.py", "../_base_/runtime/default.py"]
model = dict(type="ScatterFormerDetector", network=dict(name="scatterformer_waymo"))
custom_hooks = [dict(type="GTSamplingOffHook", last_epochs=4)]
