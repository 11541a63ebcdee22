# Kept for `python tools/train.py configs/ffnet_1.py`; the recipe is classification/ffnet_1.py.
_base_ = ["./classification/ffnet_1.py"]
