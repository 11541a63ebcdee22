# Kept for `python tools/train.py configs/ffnet_4.py`; the recipe is classification/ffnet_4.py.
_base_ = ["./classification/ffnet_4.py"]
