# Kept so that `python tools/train.py configs/ffnet_1_distill.py` keeps working: the recipe is classification/ffnet_1_distill.py.
_base_ = ["./classification/ffnet_1_distill.py"]
