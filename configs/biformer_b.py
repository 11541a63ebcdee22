# Kept so that `python tools/train.py configs/biformer_b.py` keeps working: the recipe is classification/biformer_b.py.
_base_ = ["./classification/biformer_b.py"]
