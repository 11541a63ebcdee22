# Runtime shared by every recipe: visionattn registry scope, logging, checkpoints, seeding.
default_scope = "visionattn"

default_hooks = dict(
    timer=dict(type="IterTimerHook"),
    logger=dict(type="LoggerHook", interval=50),
    param_scheduler=dict(type="ParamSchedulerHook"),
    checkpoint=dict(type="CheckpointHook", interval=1, max_keep_ckpts=3),
    sampler_seed=dict(type="DistSamplerSeedHook"),
    # --resume continues the exact random streams (see RandomStateHook's docstring)
    random_state=dict(type="RandomStateHook"),
    # <work_dir>/training_curves.png
    training_curves=dict(type="TrainingCurvesHook"),
)
# `custom_hooks` is left to the recipes (e.g. EMA in _base_/models/deit.py).

# mmengine's visualizer: every logged scalar (and the training-curves image) goes to
# <work_dir>/<timestamp>/vis_data/ (LocalVisBackend: scalars.json, vis_image/) and to TensorBoard event
# files in the same folder when the tensorboard package is installed (`tensorboard --logdir work_dirs`);
# without it the TensorBoard backend stays silent after one warning.
vis_backends = [dict(type="LocalVisBackend"), dict(type="OptionalTensorboardVisBackend")]
visualizer = dict(type="Visualizer", vis_backends=vis_backends)

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
    dist_cfg=dict(backend="nccl"),
)
randomness = dict(seed=0, deterministic=False)
log_processor = dict(window_size=10)
log_level = "INFO"
load_from = None
resume = False
