# FFNet-3 ImageNet-1k recipe: as ffnet_1.py with drop path 0.35, Mixup 0.8, val crop 0.95.
# Published: 83.9 top-1 (84.5 KD).
_base_ = ["ffnet_1.py"]
model = dict(network="ffnet_3", network_kwargs=dict(drop_path_rate=0.35), mixup=dict(mixup_alpha=0.8))
val_dataloader = dict(dataset=dict(transform=dict(crop_pct=0.95)))
test_dataloader = val_dataloader
