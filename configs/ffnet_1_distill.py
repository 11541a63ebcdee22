# Kept for `python tools/train.py configs/ffnet_1_distill.py`; the recipe is classification/ffnet_1_distill.py.
_base_ = ["./classification/ffnet_1_distill.py"]
