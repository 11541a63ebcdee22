# FFNet ImageNet schedule (official train.py defaults): AdamW lr 1e-3 for a total batch of 1024 (not
# rescaled), weight decay 0.05 except on 1-D parameters (norms, biases, layer scales), 5 linear
# warm-up epochs from 1e-6, cosine to 1e-5 at epoch 300, then 20 cool-down epochs at 1e-5: timm's
# scheduler reports 300 + 20 epochs and the official loop runs all 320.
total_batch_size = 1024
optim_wrapper = dict(
    type="OptimWrapper",
    # one optimiser group per distinct setting, not per tensor (see visionattn.engine.grouped_optim)
    constructor="GroupedOptimWrapperConstructor",
    optimizer=dict(type="AdamW", lr=1e-3, weight_decay=0.05, betas=(0.9, 0.999), eps=1e-8),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0, flat_decay_mult=0.0),
)
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-3, by_epoch=True, begin=0, end=5, convert_to_iter_based=True),
    dict(type="CosineAnnealingLR", T_max=295, eta_min=1e-5, by_epoch=True, begin=5, end=300,
         convert_to_iter_based=True),
]  # no scheduler after epoch 300: the lr stays at eta_min for the cool-down
train_cfg = dict(by_epoch=True, max_epochs=320, val_interval=1)
val_cfg = dict()
test_cfg = dict()
auto_scale_lr = dict(enable=False, base_batch_size=total_batch_size)
