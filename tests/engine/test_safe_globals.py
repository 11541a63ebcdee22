import io
import pickle

import pytest
import torch
from mmengine.logging import HistoryBuffer, MessageHub

from visionattn.engine import allow_mmengine_checkpoints


def test_mmengine_message_hub_loads_weights_only():
    allow_mmengine_checkpoints()
    hub = MessageHub.get_instance("safe_globals_test")
    hub.update_scalar("train/loss", 0.5)
    hub.update_info("eta", __import__("numpy").float64(3.0))
    buf = io.BytesIO()
    torch.save(dict(message_hub=hub.state_dict(), state_dict=dict(w=torch.ones(2))), buf)
    buf.seek(0)
    ckpt = torch.load(buf)  # torch >= 2.6 default: weights_only=True
    scalars = ckpt["message_hub"]["log_scalars"]["train/loss"]
    assert isinstance(scalars, HistoryBuffer) and scalars.current() == 0.5


class _Reach:
    """A pickle that asks getattr for something other than a HistoryBuffer statistics method."""

    def __reduce__(self):
        return getattr, (HistoryBuffer, "__init__")


def test_getattr_is_restricted():
    allow_mmengine_checkpoints()
    buf = io.BytesIO()
    torch.save(dict(x=_Reach()), buf)
    buf.seek(0)
    with pytest.raises(pickle.UnpicklingError, match="__init__"):
        torch.load(buf)


def test_reading_a_checkpoint_through_the_hub_keeps_the_allowlist(tmp_path):
    """hub.read_checkpoint's temporary allowlist must not remove what allow_mmengine_checkpoints added
    (a model built from checkpoint=... and then a resumed run read both kinds in one process)."""
    from visionattn.hub import read_checkpoint

    allow_mmengine_checkpoints()
    before = set(torch.serialization.get_safe_globals())
    torch.save(dict(w=torch.ones(1), eta=__import__("numpy").float64(1.0)), tmp_path / "w.pth")
    assert read_checkpoint(tmp_path / "w.pth")["eta"] == 1.0
    assert set(torch.serialization.get_safe_globals()) == before
