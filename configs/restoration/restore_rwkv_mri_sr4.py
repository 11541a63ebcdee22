# Restore-RWKV single-task recipe: MRI (see _base_/restore_rwkv_recipe.py for the schedule).
_base_ = ["./_base_/restore_rwkv_recipe.py"]
modalities = ["MRI"]
train_dataloader = dict(dataset=dict(modalities=modalities))
val_dataloader = dict(dataset=dict(modalities=modalities, max_items=32))
test_dataloader = dict(dataset=dict(modalities=modalities))
