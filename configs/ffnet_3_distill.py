# Kept so that `python tools/train.py configs/ffnet_3_distill.py` keeps working: the recipe is classification/ffnet_3_distill.py.
_base_ = ["./classification/ffnet_3_distill.py"]
