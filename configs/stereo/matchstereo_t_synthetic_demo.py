# MatchStereo-T trained for a few hundred iterations on procedurally generated pairs (SceneFlow
# layout, written by visionattn.datasets.sample_writers.stereo.write_sceneflow_synthetic): the
# recipe of the README picture. A smoke-scale run, not a model to use.
_base_ = ["matchstereo_t_sceneflow.py"]
data_root = "datasets/synthetic_stereo"
max_iters = 400
train_dataloader = dict(
    batch_size=4, num_workers=6,
    dataset=dict(root=data_root, transform=dict(crop_size=(256, 512), scale_range=(1.0, 1.0), occlusion_prob=0.0)))
val_dataloader = None
val_cfg = None
val_evaluator = None
test_dataloader = None
test_cfg = None
test_evaluator = None
optim_wrapper = dict(optimizer=dict(lr=4e-4))
param_scheduler = [
    dict(type="LinearLR", start_factor=0.05, by_epoch=False, begin=0, end=40),
    dict(type="CosineAnnealingLR", T_max=max_iters - 40, eta_min=1e-5, by_epoch=False, begin=40, end=max_iters),
]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=max_iters + 1)
default_hooks = dict(checkpoint=dict(by_epoch=False, interval=100, max_keep_ckpts=1), logger=dict(interval=25))
