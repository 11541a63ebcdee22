"""The one-cycle LR scheduler of the LiDAR recipes: its state survives a weights-only save/load (what
checkpoints, --resume, tools/test.py and the inference tools need) and the schedule resumes exactly."""
import io

import pytest
import torch
from mmengine.registry import DefaultScope

from visionattn.engine.schedulers import OneCycleLR
from visionattn.registry import PARAM_SCHEDULERS


def _optimizer():
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(3))], lr=0.1)


def test_configs_in_the_visionattn_scope_get_the_checkpoint_safe_class():
    with DefaultScope.overwrite_default_scope("visionattn"):
        assert PARAM_SCHEDULERS.get("OneCycleLR") is OneCycleLR


@pytest.mark.parametrize("strategy", ["cos", "linear"])
def test_state_round_trips_through_a_weights_only_load(strategy):
    opt = _optimizer()
    sched = OneCycleLR(opt, eta_max=0.1, total_steps=50, by_epoch=False, anneal_strategy=strategy)
    for _ in range(12):
        opt.step()
        sched.step()
    buf = io.BytesIO()
    torch.save({"param_schedulers": [sched.state_dict()]}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)["param_schedulers"][0]  # mmengine's class fails here
    resumed_opt = _optimizer()
    resumed = OneCycleLR(resumed_opt, eta_max=0.1, total_steps=50, by_epoch=False, anneal_strategy=strategy)
    resumed.load_state_dict(state)
    for _ in range(20):
        for o, s in ((opt, sched), (resumed_opt, resumed)):
            o.step()
            s.step()
        assert resumed_opt.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
