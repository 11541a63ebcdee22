# Restore-RWKV official schedule (main_train_Restore_RWKV.py): Adam 2e-4 (0.9, 0.999), cosine to 1e-6
# over 300k iterations, validation every 1k iterations.
max_iters = 300000
val_interval = 1000

optim_wrapper = dict(type="OptimWrapper", optimizer=dict(type="Adam", lr=2e-4, betas=(0.9, 0.999)))
param_scheduler = dict(type="CosineAnnealingLR", T_max=max_iters, eta_min=1e-6, by_epoch=False)
train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=val_interval)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
# The official run: one process, batch 4. `tools/train.py --auto-scale-lr` rescales lr to the actual total batch.
auto_scale_lr = dict(enable=False, base_batch_size=4)
