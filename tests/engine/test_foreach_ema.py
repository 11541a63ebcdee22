"""ForeachExponentialMovingAverage: bit-identical to mmengine's ExponentialMovingAverage, same state dict."""
import pytest
import torch
import torch.nn as nn
from mmengine.model import ExponentialMovingAverage

from visionattn.engine.ema import ForeachExponentialMovingAverage
from visionattn.registry import MODELS


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))


@pytest.mark.parametrize("update_buffers,interval", [(True, 1), (False, 2)])
def test_same_numbers_as_mmengine(update_buffers, interval):
    net = _net()
    ours = ForeachExponentialMovingAverage(net, momentum=0.1, interval=interval, update_buffers=update_buffers)
    ref = ExponentialMovingAverage(net, momentum=0.1, interval=interval, update_buffers=update_buffers)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for step in range(5):
        net(torch.randn(2, 3, 8, 8)).square().mean().backward()  # also moves the BN running stats
        opt.step()
        opt.zero_grad()
        ours.update_parameters(net)
        ref.update_parameters(net)
        a, b = ours.state_dict(), ref.state_dict()
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (step, k)
    assert int(ours.steps) == 5


def test_registered_for_ema_hook():
    ema = MODELS.build(dict(type="ForeachExponentialMovingAverage", momentum=0.01), default_args=dict(model=_net()))
    assert isinstance(ema, ForeachExponentialMovingAverage)
