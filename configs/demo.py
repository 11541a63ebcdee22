# Kept so that `python tools/train.py configs/demo.py` keeps working: the recipe is classification/demo.py.
_base_ = ["./classification/demo.py"]
