"""visionattn's registries: children of mmengine's root registries, scope ``visionattn``.

Configs set ``default_scope = 'visionattn'``; ``dict(type='ImageClassifier', ...)`` then resolves
here first and falls back to mmengine's own (optimisers, schedulers, hooks, runners).
"""
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import METRICS as MMENGINE_METRICS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import TRANSFORMS as MMENGINE_TRANSFORMS
from mmengine.registry import Registry

_LOCATIONS = ["visionattn.engine", "visionattn.datasets", "visionattn.evaluation", "visionattn.models"]

MODELS = Registry("model", parent=MMENGINE_MODELS, scope="visionattn", locations=_LOCATIONS)
DATASETS = Registry("dataset", parent=MMENGINE_DATASETS, scope="visionattn", locations=_LOCATIONS)
TRANSFORMS = Registry("transform", parent=MMENGINE_TRANSFORMS, scope="visionattn", locations=_LOCATIONS)
METRICS = Registry("metric", parent=MMENGINE_METRICS, scope="visionattn", locations=_LOCATIONS)
HOOKS = Registry("hook", parent=MMENGINE_HOOKS, scope="visionattn", locations=_LOCATIONS)
