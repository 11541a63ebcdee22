# Kept for `python tools/train.py configs/biformer_s.py`; the recipe is classification/biformer_s.py.
_base_ = ["./classification/biformer_s.py"]
