# Kept so that `python tools/train.py configs/ffnet_2_distill.py` keeps working: the recipe is classification/ffnet_2_distill.py.
_base_ = ["./classification/ffnet_2_distill.py"]
