from collections import Counter

from visionattn.datasets.repeat_aug_sampler import RepeatAugSampler


def test_repeats_spread_over_ranks_and_reshuffle_per_epoch():
    data = list(range(512))
    ranks = [RepeatAugSampler(data, num_repeats=3, seed=1, num_replicas=4, rank=r) for r in range(4)]
    per_rank = [list(s) for s in ranks]
    assert all(len(idx) == len(s) == 512 // 4 for idx, s in zip(per_rank, ranks))
    for idx in per_rank:  # one rank never holds two copies of an image next to each other
        assert all(a != b for a, b in zip(idx, idx[1:]))
    counts = Counter(i for idx in per_rank for i in idx)
    assert max(counts.values()) <= 3 and len(counts) < 512  # repeated images replace unseen ones
    first = list(ranks[0])
    ranks[0].set_epoch(1)
    assert list(ranks[0]) != first


def test_single_process_is_a_plain_shuffle():
    sampler = RepeatAugSampler(list(range(300)), num_repeats=3, num_replicas=1, rank=0)
    idx = list(sampler)
    assert len(set(idx)) == len(idx) == 256  # timm keeps whole rounds of 256 per epoch
