# Kept for `python tools/train.py configs/ffnet_3_distill.py`; the recipe is classification/ffnet_3_distill.py.
_base_ = ["./classification/ffnet_3_distill.py"]
