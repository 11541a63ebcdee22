"""Switch GT-database sampling off for the last epochs of a LiDAR detector's training.

OpenPCDet's ``DisableAugmentationHook`` (ScatterFormer's Waymo recipe: ``gt_sampling`` off for the
last 4 of 24 epochs): from epoch ``max_epochs - last_epochs`` on (0-based), the network trains on
real scenes only. A run resumed past that epoch switches it off again at its first epoch.
"""
from typing import Iterator, List

from mmengine.hooks import Hook

from ...registry import HOOKS


def _datasets(dataset) -> Iterator:
    """The dataset and every dataset it wraps (ConcatDataset ``datasets``, Repeat/ClassBalanced/Subset ``dataset``)."""
    seen = set()
    stack = [dataset]
    while stack:
        d = stack.pop()
        if d is None or id(d) in seen:
            continue
        seen.add(id(d))
        yield d
        stack.extend(getattr(d, "datasets", None) or [])
        stack.append(getattr(d, "dataset", None))


def _transforms(obj) -> Iterator:
    """Every transform of a pipeline, nested ones (Compose, RandomApply, ...) included."""
    seen = set()
    stack = [obj]
    while stack:
        t = stack.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        if t is not obj:
            yield t
        inner = getattr(t, "transforms", None)
        if isinstance(inner, (list, tuple)):
            stack.extend(inner)


def gt_sampling_transforms(dataset, name: str = "GTSampling") -> List:
    """The transforms of class ``name`` in the pipelines of ``dataset`` and of the datasets it wraps."""
    found = []
    for d in _datasets(dataset):
        pipeline = getattr(d, "pipeline", None)
        if pipeline is not None:
            found.extend(t for t in _transforms(pipeline) if type(t).__name__ == name)
    return found


@HOOKS.register_module()
class GTSamplingOffHook(Hook):
    """Sets ``enabled = False`` on every ``GTSampling`` transform of the training dataset from epoch
    ``max_epochs - last_epochs`` on, and logs it once.

    Data workers hold copies of the dataset: they are started again for each epoch unless
    ``persistent_workers=True``, in which case the hook makes the dataloader start new ones.
    """

    priority = "NORMAL"

    def __init__(self, last_epochs: int = 4, transform: str = "GTSampling"):
        if not isinstance(last_epochs, int) or last_epochs < 0:
            raise ValueError(f"last_epochs must be an int >= 0, got {last_epochs!r}")
        self.last_epochs = last_epochs
        self.transform = transform
        self.switched_off = False

    def before_train_epoch(self, runner) -> None:
        if self.switched_off or runner.epoch < runner.max_epochs - self.last_epochs:
            return
        loader = runner.train_dataloader
        transforms = gt_sampling_transforms(loader.dataset, self.transform)
        for t in transforms:
            t.enabled = False
        self.switched_off = True
        if getattr(loader, "persistent_workers", False) and getattr(loader, "_iterator", None) is not None:
            loader._iterator = None  # the workers' dataset copies still sample: start new workers
        if transforms:
            runner.logger.info(f"GTSamplingOffHook: {self.transform} switched off from epoch {runner.epoch + 1} "
                               f"(the last {self.last_epochs} of {runner.max_epochs}; {len(transforms)} transform(s))")
        else:
            runner.logger.warning(f"GTSamplingOffHook: no {self.transform} transform in the training dataset's "
                                  f"pipeline; nothing to switch off")
