# CIFAR10 in its release layout (datasets/cifar10/cifar-10-batches-py, see datasets/README.md),
# read through the shared up-training pipeline (uptraining.py).
_base_ = ["uptraining.py"]
data_root = "datasets/cifar10"

train_dataloader = dict(dataset=dict(type="CIFAR10", root=data_root))
val_dataloader = dict(dataset=dict(type="CIFAR10", root=data_root, split="test"))
test_dataloader = val_dataloader
