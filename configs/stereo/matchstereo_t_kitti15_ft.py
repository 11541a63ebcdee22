# MatchStereo-T fine-tuned on KITTI 2015 from the official FSD-Mix weights (model zoo).
_base_ = ["../_base_/datasets/kitti15.py", "../_base_/schedules/stereo_adamw.py", "../_base_/runtime/default.py"]
model = dict(type="StereoMatcher", network="matchstereo_tiny", pretrained=True,
             loss=dict(gamma=0.9, seq_weight=1.0, cv_weight=0.0, occ_weight=0.2))
max_iters = 20000
optim_wrapper = dict(optimizer=dict(lr=5e-5))
param_scheduler = [
    dict(type="LinearLR", start_factor=0.05, by_epoch=False, begin=0, end=500),
    dict(type="CosineAnnealingLR", T_max=max_iters - 500, eta_min=1e-6, by_epoch=False, begin=500, end=max_iters),
]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=2000)
default_hooks = dict(checkpoint=dict(by_epoch=False, interval=2000))
log_processor = dict(by_epoch=False)
