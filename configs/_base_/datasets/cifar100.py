# CIFAR100 in its release layout (datasets/cifar100/cifar-100-python, see datasets/README.md),
# read through the shared up-training pipeline (uptraining.py).
_base_ = ["uptraining.py"]
data_root = "datasets/cifar100"

train_dataloader = dict(dataset=dict(type="CIFAR100", root=data_root))
val_dataloader = dict(dataset=dict(type="CIFAR100", root=data_root, split="test"))
test_dataloader = val_dataloader
