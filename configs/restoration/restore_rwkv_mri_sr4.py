# Restore-RWKV official recipe (main_train_Restore_RWKV.py) on MRI x4 super-resolution: L1 loss, batch 4
# of 128x128 crops, Adam 2e-4 cosine to 1e-6 over 300k iterations (_base_/schedules/restore_rwkv_300k.py),
# validation every 1k iterations on 32 slices, best checkpoint by mean PSNR (Restore-RWKV medical
# protocol). The CT, PET and all-in-one recipes inherit this file and change the modalities only.
_base_ = ["../_base_/datasets/restore_rwkv.py", "../_base_/schedules/restore_rwkv_300k.py",
          "../_base_/runtime/default.py"]
custom_imports = dict(imports=["visionattn.datasets.paired_restoration", "visionattn.engine.restoration_model",
                               "visionattn.evaluation.restoration_metrics"], allow_failed_imports=False)

model = dict(type="ImageRestorer", network=dict(name="restore_rwkv", in_chans=1, out_chans=1), loss="l1")

modalities = ["MRI"]
train_dataloader = dict(dataset=dict(modalities=modalities))
val_dataloader = dict(dataset=dict(modalities=modalities))
test_dataloader = dict(dataset=dict(modalities=modalities))

# Iteration-based: checkpoint at every validation (the schedule's val_interval), keep the best PSNR.
default_hooks = dict(
    logger=dict(interval=100),
    checkpoint=dict(by_epoch=False, interval=_base_.val_interval, save_best="psnr", rule="greater"))
log_processor = dict(by_epoch=False)
