# Restore-RWKV official recipe (main_train_Restore_RWKV.py): Adam 2e-4 (0.9, 0.999), cosine to 1e-6
# over 300k iterations, batch 4, random 128x128 crops, no flips, L1, validation every 1k iterations
# on 32 slices per modality, best checkpoint by mean PSNR (Restore-RWKV medical protocol).
default_scope = "visionattn"
custom_imports = dict(imports=["visionattn.datasets.paired_restoration", "visionattn.engine.restoration_model",
                               "visionattn.evaluation.restoration_metrics"], allow_failed_imports=False)
data_root = "datasets/restore_rwkv/"
modalities = ["MRI"]
max_iters = 300000
val_interval = 1000

model = dict(type="ImageRestorer", network=dict(name="restore_rwkv", in_chans=1, out_chans=1), loss="l1")

train_dataloader = dict(
    batch_size=4, num_workers=4, persistent_workers=True,
    sampler=dict(type="InfiniteSampler", shuffle=True),
    collate_fn=dict(type="restoration_collate"),
    dataset=dict(type="PairedSliceDataset", root=data_root, layout="restore_rwkv", split="train",
                 modalities=modalities, crop=128))
val_dataloader = dict(
    batch_size=1, num_workers=2,
    sampler=dict(type="DefaultSampler", shuffle=False),
    collate_fn=dict(type="restoration_collate"),
    dataset=dict(type="PairedSliceDataset", root=data_root, layout="restore_rwkv", split="validation",
                 modalities=modalities, max_items=32 * len(modalities)))
test_dataloader = dict(val_dataloader, dataset=dict(val_dataloader["dataset"], split="test", max_items=None))
val_evaluator = dict(type="MedicalRestorationMetric")
test_evaluator = val_evaluator

optim_wrapper = dict(type="OptimWrapper", optimizer=dict(type="Adam", lr=2e-4, betas=(0.9, 0.999)))
param_scheduler = dict(type="CosineAnnealingLR", T_max=max_iters, eta_min=1e-6, by_epoch=False)
train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=val_interval)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")

default_hooks = dict(
    timer=dict(type="IterTimerHook"),
    logger=dict(type="LoggerHook", interval=100),
    param_scheduler=dict(type="ParamSchedulerHook"),
    checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=val_interval, max_keep_ckpts=3,
                    save_best="psnr", rule="greater"),
    sampler_seed=dict(type="DistSamplerSeedHook"),
)
log_processor = dict(by_epoch=False)
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend="nccl"))
randomness = dict(seed=0)
