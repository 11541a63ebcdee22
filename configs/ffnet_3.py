# Kept so that `python tools/train.py configs/ffnet_3.py` keeps working: the recipe is classification/ffnet_3.py.
_base_ = ["./classification/ffnet_3.py"]
