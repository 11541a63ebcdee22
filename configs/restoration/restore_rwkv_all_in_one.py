# Restore-RWKV all-in-one recipe: PET + CT + MRI pairs in one training set, one model.
_base_ = ["./_base_/restore_rwkv_recipe.py"]
modalities = ["PET", "CT", "MRI"]
train_dataloader = dict(dataset=dict(modalities=modalities))
val_dataloader = dict(dataset=dict(modalities=modalities, max_items=32))
test_dataloader = dict(dataset=dict(modalities=modalities))
