# mmdet's runtime plus the imports that register visionattn's backbone wrapper and optimiser glue.
_base_ = 'mmdet::_base_/default_runtime.py'

custom_imports = dict(
    imports=['visionattn.engine.mm_backbone', 'visionattn.engine.layer_decay_optim', 'visionattn.engine.grouped_optim'],
    allow_failed_imports=False)

# Scalars and images to vis_data/ (mmengine's LocalVisBackend) and to TensorBoard when it is installed.
vis_backends = [dict(type='LocalVisBackend'), dict(type='visionattn.OptionalTensorboardVisBackend')]
visualizer = dict(type='DetLocalVisualizer', vis_backends=vis_backends, name='visualizer')
