# Kept for `python tools/train.py configs/ffnet_2.py`; the recipe is classification/ffnet_2.py.
_base_ = ["./classification/ffnet_2.py"]
