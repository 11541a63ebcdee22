# TinyImageNet in its release layout (datasets/tiny_imagenet/tiny-imagenet-200, see datasets/README.md),
# read through the shared up-training pipeline (uptraining.py).
_base_ = ["uptraining.py"]
data_root = "datasets/tiny_imagenet"

train_dataloader = dict(dataset=dict(type="TinyImageNet", root=data_root))
val_dataloader = dict(dataset=dict(type="TinyImageNet", root=data_root, split="val"))
test_dataloader = val_dataloader
