# FFNet-4 ImageNet-1k pre-training at 256 (the release is the 384 fine-tune of this): drop path 0.4,
# Mixup 0.8, val crop 0.95; otherwise as ffnet_1.py. Published (after 384 fine-tuning): 85.3.
_base_ = ["ffnet_1.py"]
model = dict(network="ffnet_4", network_kwargs=dict(drop_path_rate=0.4), mixup=dict(mixup_alpha=0.8))
val_dataloader = dict(dataset=dict(transform=dict(crop_pct=0.95)))
test_dataloader = val_dataloader
