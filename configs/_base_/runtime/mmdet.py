# mmdet's runtime plus the imports that register visionattn's backbone wrapper and optimiser glue.
_base_ = 'mmdet::_base_/default_runtime.py'

custom_imports = dict(
    imports=['visionattn.engine.mm_backbone', 'visionattn.engine.layer_decay_optim'],
    allow_failed_imports=False)
