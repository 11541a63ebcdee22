# DeiT-style classifier: any timm/visionattn network, Mixup 0.8 + CutMix 1.0, label smoothing
# 0.1, random erasing 0.25, drop-path 0.1, EMA of the weights (decay 0.99996).
# Recipes set model.network (and drop_path_rate) to their backbone.
model = dict(
    type="ImageClassifier",
    network="deit_small_patch16_224",
    num_classes=1000,
    network_kwargs=dict(drop_path_rate=0.1),
    mixup=dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, mode="batch"),
    label_smoothing=0.1,
    data_preprocessor=dict(type="ClassificationDataPreprocessor", random_erasing=dict(probability=0.25, mode="pixel")),
)
# mmengine's EMAHook; validation and checkpoints' `state_dict` use the EMA weights. The average is
# visionattn.engine.ema.ForeachExponentialMovingAverage: mmengine's update in one multi-tensor op per step.
custom_hooks = [dict(type="EMAHook", ema_type="ForeachExponentialMovingAverage", momentum=4e-5, update_buffers=True,
                     priority="ABOVE_NORMAL")]
