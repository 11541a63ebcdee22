import importlib
import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / "tools"


@pytest.fixture(scope="session")
def load_tool():
    """The module of the command-line program ``name``: ``visionattn.cli.<name>`` for the installed
    programs (``tools/<name>.py`` only wraps it), else ``tools/<name>.py`` imported as a module."""

    def load(name):
        if importlib.util.find_spec(f"visionattn.cli.{name}") is not None:
            return importlib.import_module(f"visionattn.cli.{name}")
        spec = importlib.util.spec_from_file_location(f"tools_{name}", TOOLS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="session")
def tool_env():
    """Environment for tool subprocesses: this checkout's visionattn first, one thread each."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
                OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


@pytest.fixture
def tiny_config(tmp_path, samples_root):
    """Write a config inheriting configs/classification/demo.py, shrunk to a 32 px test_resnet on the sample data."""

    def write(extra: str = "", name: str = "tiny.py") -> Path:
        path = tmp_path / name
        path.write_text(
            f"_base_ = [{str(REPO / 'configs' / 'classification' / 'demo.py')!r}]\n"
            f"data_root = {str(samples_root / 'imagenet')!r}\n"
            "model = dict(network='test_resnet')\n"
            "train_dataloader = dict(batch_size=4, num_workers=1,\n"
            "    dataset=dict(root=data_root, transform=dict(input_size=32)))\n"
            "val_dataloader = dict(batch_size=40,\n"
            "    dataset=dict(root=data_root, transform=dict(input_size=32)))\n"
            "test_dataloader = val_dataloader\n"
            "default_hooks = dict(logger=dict(interval=1))\n"
            + extra)
        return path

    return write


@pytest.fixture
def one_thread():
    """Tiny models train faster on one thread, and pytest-xdist runs tests side by side."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
