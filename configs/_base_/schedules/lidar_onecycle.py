# OpenPCDet's adam_onecycle as the ScatterFormer Waymo config sets it: Adam with decoupled weight decay
# (AdamW, on every parameter) lr 0.006, wd 0.05, betas (0.95 -> 0.85 -> 0.95 cycled, 0.99), one cycle:
# cosine from lr/100 up to lr over the first 10 % of the iterations, then cosine down to lr/100/1e4;
# gradient norm clipped at 10; 24 epochs, validation at the end.
max_epochs = 24
lr = 0.006
pct_start = 0.1
optim_wrapper = dict(type="OptimWrapper",
                     optimizer=dict(type="AdamW", lr=lr, betas=(0.95, 0.99), weight_decay=0.05),
                     clip_grad=dict(max_norm=10, norm_type=2))
param_scheduler = [
    dict(type="OneCycleLR", eta_max=lr, pct_start=pct_start, div_factor=100, final_div_factor=1e4,
         anneal_strategy="cos", by_epoch=True, begin=0, end=max_epochs, convert_to_iter_based=True),
    # beta1 (the "momentum" of Adam): 0.95 -> 0.85 while the learning rate rises, back to 0.95 after
    dict(type="CosineAnnealingMomentum", eta_min=0.85, by_epoch=True, begin=0, end=pct_start * max_epochs,
         convert_to_iter_based=True),
    dict(type="CosineAnnealingMomentum", eta_min=0.95, by_epoch=True, begin=pct_start * max_epochs,
         end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=max_epochs, val_interval=max_epochs)
val_cfg = dict()
test_cfg = dict()
