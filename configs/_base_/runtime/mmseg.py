# mmseg's runtime plus the imports that register visionattn's backbone wrapper, optimiser glue and metric.
_base_ = 'mmseg::_base_/default_runtime.py'

custom_imports = dict(
    imports=['visionattn.engine.mm_backbone', 'visionattn.engine.layer_decay_optim',
             'visionattn.evaluation.segmentation_iou'],
    allow_failed_imports=False)
