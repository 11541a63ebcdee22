# Runtime shared by every recipe: visionattn registry scope, logging, checkpoints, seeding.
default_scope = "visionattn"

default_hooks = dict(
    timer=dict(type="IterTimerHook"),
    logger=dict(type="LoggerHook", interval=50),
    param_scheduler=dict(type="ParamSchedulerHook"),
    checkpoint=dict(type="CheckpointHook", interval=1, max_keep_ckpts=3),
    sampler_seed=dict(type="DistSamplerSeedHook"),
)
# RandomStateHook makes --resume continue the exact random streams (see its docstring);
# TrainingCurvesHook draws <work_dir>/training_curves.png.
custom_hooks = [dict(type="RandomStateHook"), dict(type="TrainingCurvesHook")]

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
