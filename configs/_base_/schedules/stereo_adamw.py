# AdamW + one-cycle-like warmup/cosine by iterations (the official recipe is unpublished: our choice).
max_iters = 200000
optim_wrapper = dict(type="OptimWrapper", optimizer=dict(type="AdamW", lr=2e-4, weight_decay=1e-5),
                     clip_grad=dict(max_norm=1.0))
param_scheduler = [
    dict(type="LinearLR", start_factor=0.01, by_epoch=False, begin=0, end=1000),
    dict(type="CosineAnnealingLR", T_max=max_iters - 1000, eta_min=1e-6, by_epoch=False, begin=1000, end=max_iters),
]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=10000)
val_cfg = dict()
test_cfg = dict()
