# Iteration-based GAN schedule for the RestoreFormer recipes: constant learning rates (the official MultiStepLR
# milestones are stepped per epoch by PyTorch-Lightning and never reached), 400k iterations (the official
# configs set no length; ours), validation every 5k iterations.
max_iters = 400000
val_interval = 5000
train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=val_interval)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
param_scheduler = []
