"""visionattn's registries: children of mmengine's root registries, scope ``visionattn``.

Configs set ``default_scope = 'visionattn'``; ``dict(type='ImageClassifier', ...)`` then resolves
here first and falls back to mmengine's own (optimisers, schedulers, hooks, runners). Every
registry the Runner looks up has a child here, so that fallback is silent.
"""
from mmengine import registry as mm
from mmengine.registry import Registry

_LOCATIONS = ["visionattn.engine", "visionattn.datasets", "visionattn.evaluation", "visionattn.models"]

MODELS = Registry("model", parent=mm.MODELS, scope="visionattn", locations=_LOCATIONS)
DATASETS = Registry("dataset", parent=mm.DATASETS, scope="visionattn", locations=_LOCATIONS)
TRANSFORMS = Registry("transform", parent=mm.TRANSFORMS, scope="visionattn", locations=_LOCATIONS)
METRICS = Registry("metric", parent=mm.METRICS, scope="visionattn", locations=_LOCATIONS)
HOOKS = Registry("hook", parent=mm.HOOKS, scope="visionattn", locations=_LOCATIONS)

# Runner plumbing: nothing of ours registered (yet); children so lookups in scope 'visionattn' succeed.
RUNNERS = Registry("runner", parent=mm.RUNNERS, scope="visionattn")
RUNNER_CONSTRUCTORS = Registry("runner constructor", parent=mm.RUNNER_CONSTRUCTORS, scope="visionattn")
LOOPS = Registry("loop", parent=mm.LOOPS, scope="visionattn")
DATA_SAMPLERS = Registry("data sampler", parent=mm.DATA_SAMPLERS, scope="visionattn")
MODEL_WRAPPERS = Registry("model_wrapper", parent=mm.MODEL_WRAPPERS, scope="visionattn")
WEIGHT_INITIALIZERS = Registry("weight initializer", parent=mm.WEIGHT_INITIALIZERS, scope="visionattn")
OPTIMIZERS = Registry("optimizer", parent=mm.OPTIMIZERS, scope="visionattn")
OPTIM_WRAPPERS = Registry("optim_wrapper", parent=mm.OPTIM_WRAPPERS, scope="visionattn")
OPTIM_WRAPPER_CONSTRUCTORS = Registry("optimizer wrapper constructor", parent=mm.OPTIM_WRAPPER_CONSTRUCTORS,
                                      scope="visionattn")
PARAM_SCHEDULERS = Registry("parameter scheduler", parent=mm.PARAM_SCHEDULERS, scope="visionattn")
EVALUATOR = Registry("evaluator", parent=mm.EVALUATOR, scope="visionattn")
TASK_UTILS = Registry("task util", parent=mm.TASK_UTILS, scope="visionattn")
VISUALIZERS = Registry("visualizer", parent=mm.VISUALIZERS, scope="visionattn")
VISBACKENDS = Registry("vis_backend", parent=mm.VISBACKENDS, scope="visionattn")
LOG_PROCESSORS = Registry("log_processor", parent=mm.LOG_PROCESSORS, scope="visionattn")
FUNCTIONS = Registry("function", parent=mm.FUNCTIONS, scope="visionattn")
