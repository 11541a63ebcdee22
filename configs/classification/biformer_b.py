# BiFormer-B ImageNet-1k recipe of the paper: as biformer_s.py (same schedule, augmentation and EMA)
# with drop path 0.1: the official trainer's default; the value used for the released B weights is
# not published.
# Train: python tools/train.py configs/classification/biformer_b.py [--amp]   (data: datasets/imagenet)
# On GPUs add --cfg-options model.cuda_graph=True (see biformer_s.py for the measured speed-up).
_base_ = ["./biformer_s.py"]
model = dict(network="biformer_base", network_kwargs=dict(drop_path_rate=0.1))
