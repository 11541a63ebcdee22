# Food101 in its release layout (datasets/food101/food-101, see datasets/README.md),
# read through the shared up-training pipeline (uptraining.py).
_base_ = ["uptraining.py"]
data_root = "datasets/food101"

train_dataloader = dict(dataset=dict(type="Food101", root=data_root))
val_dataloader = dict(dataset=dict(type="Food101", root=data_root, split="test"))
test_dataloader = val_dataloader
