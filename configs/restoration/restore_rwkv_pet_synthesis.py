# Restore-RWKV single-task recipe: PET (see _base_/restore_rwkv_recipe.py for the schedule).
_base_ = ["./_base_/restore_rwkv_recipe.py"]
modalities = ["PET"]
train_dataloader = dict(dataset=dict(modalities=modalities))
val_dataloader = dict(dataset=dict(modalities=modalities, max_items=32))
test_dataloader = dict(dataset=dict(modalities=modalities))
