# Restore-RWKV all-in-one recipe: PET + CT + MRI pairs in one training set, one model; otherwise as
# restore_rwkv_mri_sr4.py.
_base_ = ["./restore_rwkv_mri_sr4.py"]
modalities = ["PET", "CT", "MRI"]
train_dataloader = dict(dataset=dict(modalities=modalities))
val_dataloader = dict(dataset=dict(modalities=modalities))
test_dataloader = dict(dataset=dict(modalities=modalities))
