"""DeiT's repeated augmentation as an mmengine data sampler (timm's RepeatAugSampler).

Each image appears ``num_repeats`` times per epoch, the copies landing on different ranks (so
each gets its own random augmentation), while every rank still sees ``len(dataset) / world size``
images per epoch. DeiT uses it only when training distributed; on one process it reduces to a
shuffle, as there.
"""
from typing import Optional

from mmengine.dist import get_dist_info
from timm.data.distributed_sampler import RepeatAugSampler as _TimmRepeatAugSampler

from ..registry import DATA_SAMPLERS


@DATA_SAMPLERS.register_module()
class RepeatAugSampler(_TimmRepeatAugSampler):
    """Indices for one rank; ``set_epoch`` (mmengine's DistSamplerSeedHook) reshuffles.

    Args:
        dataset: the map-style dataset.
        num_repeats: copies of each image per epoch across ranks (DeiT: 3).
        seed: added to the epoch to seed the shuffle (mmengine passes the run's seed).
        num_replicas / rank: default to the distributed world.
    """

    def __init__(self, dataset, num_repeats: int = 3, shuffle: bool = True, seed: Optional[int] = None,
                 num_replicas: Optional[int] = None, rank: Optional[int] = None):
        dist_rank, world = get_dist_info()
        num_replicas = world if num_replicas is None else num_replicas
        rank = dist_rank if rank is None else rank
        if num_replicas == 1:
            num_repeats = 1
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, num_repeats=num_repeats)
        self.seed = seed or 0

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(self.seed + epoch)
