# Kept for `python tools/train.py configs/demo.py`; the recipe is classification/demo.py.
_base_ = ["./classification/demo.py"]
