# Kept for `python tools/train.py configs/ffnet_3.py`; the recipe is classification/ffnet_3.py.
_base_ = ["./classification/ffnet_3.py"]
