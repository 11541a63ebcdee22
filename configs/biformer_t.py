# Kept for `python tools/train.py configs/biformer_t.py`; the recipe is classification/biformer_t.py.
_base_ = ["./classification/biformer_t.py"]
