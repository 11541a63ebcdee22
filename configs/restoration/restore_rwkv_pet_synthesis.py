# Restore-RWKV single-task recipe on PET: as restore_rwkv_mri_sr4.py (schedule, loss, checkpoints) with
# PET pairs.
_base_ = ["./restore_rwkv_mri_sr4.py"]
modalities = ["PET"]
train_dataloader = dict(dataset=dict(modalities=modalities))
val_dataloader = dict(dataset=dict(modalities=modalities))
test_dataloader = dict(dataset=dict(modalities=modalities))
