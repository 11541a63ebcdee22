# The key-driven GQA paper's up-training schedule: AdamW lr 1e-5 (torch's default weight decay
# 0.01), constant learning rate, 5 epochs, validation every epoch.
optim_wrapper = dict(type="OptimWrapper", optimizer=dict(type="AdamW", lr=1e-5, weight_decay=0.01))
train_cfg = dict(by_epoch=True, max_epochs=5, val_interval=1)
val_cfg = dict()
test_cfg = dict()
# The paper's batch 32. `tools/train.py --auto-scale-lr` rescales lr to the actual total batch.
auto_scale_lr = dict(enable=False, base_batch_size=32)
