import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "datasets" / "samples"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def samples_root() -> Path:
    """datasets/samples, written by tools/make_samples.py (make test runs it first)."""
    from visionattn.datasets.sample_writers import SAMPLE_WRITERS, _discover, write_samples

    _discover()
    missing = [n for n in SAMPLE_WRITERS if not (SAMPLES / n).is_dir() or os.environ.get("VISIONATTN_REWRITE_SAMPLES")]
    if missing:
        write_samples(SAMPLES, missing)
    return SAMPLES


@pytest.fixture(autouse=True)
def _isolated_mm_default_scope():
    """mmengine's default scope is process-global and the newest Runner's wins: without this, a test
    that built an mmseg/mmdet Runner decides which registry the next test's lookups go to."""
    from mmengine.registry import DefaultScope

    saved = DefaultScope._instance_dict.copy()  # what overwrite_default_scope restores too
    yield
    DefaultScope._instance_dict = saved
