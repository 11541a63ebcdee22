# Kept so that `python tools/train.py configs/ffnet_2.py` keeps working: the recipe is classification/ffnet_2.py.
_base_ = ["./classification/ffnet_2.py"]
