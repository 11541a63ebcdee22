# DeiT schedule: AdamW lr 5e-4 x (batch / 512), weight decay 0.05 (none on norms, biases,
# position embeddings and tokens), 5 linear warm-up epochs, cosine to 1e-5 at epoch 300.
total_batch_size = 1024
optim_wrapper = dict(
    type="OptimWrapper",
    # one optimiser group per distinct setting, not per tensor (see visionattn.engine.grouped_optim)
    constructor="GroupedOptimWrapperConstructor",
    optimizer=dict(type="AdamW", lr=5e-4 * total_batch_size / 512, weight_decay=0.05, betas=(0.9, 0.999), eps=1e-8),
    paramwise_cfg=dict(
        norm_decay_mult=0.0,
        bias_decay_mult=0.0,
        flat_decay_mult=0.0,
        custom_keys={".pos_embed": dict(decay_mult=0.0), ".cls_token": dict(decay_mult=0.0)},
    ),
)
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-3, by_epoch=True, begin=0, end=5, convert_to_iter_based=True),
    dict(type="CosineAnnealingLR", T_max=295, eta_min=1e-5, by_epoch=True, begin=5, end=300,
         convert_to_iter_based=True),
]
train_cfg = dict(by_epoch=True, max_epochs=300, val_interval=1)
val_cfg = dict()
test_cfg = dict()
# `--cfg-options auto_scale_lr.enable=True` rescales lr to the actual total batch size.
auto_scale_lr = dict(enable=False, base_batch_size=total_batch_size)
