# Kept for `python tools/train.py configs/biformer_b.py`; the recipe is classification/biformer_b.py.
_base_ = ["./classification/biformer_b.py"]
