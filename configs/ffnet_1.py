# Kept so that `python tools/train.py configs/ffnet_1.py` keeps working: the recipe is classification/ffnet_1.py.
_base_ = ["./classification/ffnet_1.py"]
