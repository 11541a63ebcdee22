# Kept for `python tools/train.py configs/ffnet_2_distill.py`; the recipe is classification/ffnet_2_distill.py.
_base_ = ["./classification/ffnet_2_distill.py"]
