import torch

from visionattn.models.derived_tensor import DerivedTensor


def test_cached_until_a_parameter_changes():
    p = torch.nn.Parameter(torch.ones(3))
    calls = []

    def compute():
        calls.append(1)
        return p * 2

    cache = DerivedTensor()
    first = cache.get((p,), compute)
    assert cache.get((p,), compute) is first and len(calls) == 1
    with torch.no_grad():
        p.add_(1.0)  # an optimiser step: the version counter moves
    assert torch.equal(cache.get((p,), compute), torch.full((3,), 4.0)) and len(calls) == 2
    p.data = torch.zeros(3)  # new storage
    assert torch.equal(cache.get((p,), compute), torch.zeros(3)) and len(calls) == 3
    cache.clear()
    cache.get((p,), compute)
    assert len(calls) == 4
    assert not cache.value.requires_grad  # computed without autograd
