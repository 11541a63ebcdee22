# `make demo`: a small classifier trained for 200 iterations on the 8-class ImageNet-format
# sample set (datasets/samples/imagenet, written by tools/make_samples.py) on CPU.
# tools/demo.py sets model.network to the smallest registered visionattn backbone.
_base_ = ["../_base_/datasets/imagenet.py", "../_base_/runtime/default.py"]

data_root = "datasets/samples/imagenet"
input_size = 64
num_classes = 8
model = dict(
    type="ImageClassifier",
    network="resnet10t",
    num_classes=num_classes,
    label_smoothing=0.1,
    data_preprocessor=dict(type="ClassificationDataPreprocessor"),
)
train_dataloader = dict(
    batch_size=16,
    num_workers=1,
    sampler=dict(_delete_=True, type="DefaultSampler", shuffle=True),  # one process: no repeated augmentation
    dataset=dict(root=data_root,
                 transform=dict(input_size=input_size, scale=(0.35, 1.0), auto_augment=None, color_jitter=0.0)),
)
val_dataloader = dict(
    batch_size=40,
    num_workers=0,
    dataset=dict(root=data_root, transform=dict(input_size=input_size, crop_pct=1.0)),
)
test_dataloader = val_dataloader

max_iters = 200
optim_wrapper = dict(type="OptimWrapper", optimizer=dict(type="AdamW", lr=2e-3, weight_decay=0.05),
                     clip_grad=dict(max_norm=5.0))
param_scheduler = [
    dict(type="LinearLR", start_factor=0.01, by_epoch=False, begin=0, end=30),
    dict(type="CosineAnnealingLR", T_max=max_iters - 30, eta_min=1e-5, by_epoch=False, begin=30, end=max_iters),
]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=50)
val_cfg = dict()
test_cfg = dict()
default_hooks = dict(logger=dict(interval=20), checkpoint=dict(by_epoch=False, interval=100, max_keep_ckpts=1),
                     training_curves=dict(interval=5))
log_processor = dict(by_epoch=False)
