"""``tools/test.py --out results.pkl``: every test prediction in a file that loads without running code.

mmengine's own ``DumpResults`` pickles OpenMMLab data-sample objects, which only a full unpickler
(arbitrary code) can read back. Here every prediction becomes plain data first: dicts, lists,
tuples, strings, numbers and numpy arrays (tensors moved to the CPU), so
:func:`load_predictions` reads the file with visionattn's numpy-only unpickler.
"""
import pickle
from pathlib import Path
from typing import Any, Dict, List, Sequence, Union

import numpy as np
import torch
from mmengine.dist import is_main_process
from mmengine.evaluator import BaseMetric

from ..registry import METRICS
from ..safe_pickle import load_arrays_only


def to_plain(obj: Any) -> Any:
    """``obj`` with tensors as numpy arrays and mmengine data elements (``DetDataSample``,
    ``InstanceData``...) as dicts of their fields (``metainfo`` under the key ``'metainfo'``)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().numpy()
    if isinstance(obj, (np.ndarray, np.generic, str, bytes, int, float, bool, type(None))):
        return obj
    if hasattr(obj, "to_dict") and hasattr(obj, "metainfo_keys"):  # mmengine BaseDataElement
        out = {k: to_plain(getattr(obj, k)) for k in obj.keys()}
        if obj.metainfo_keys():
            out["metainfo"] = {k: to_plain(v) for k, v in obj.metainfo.items()}
        return out
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_plain(v) for v in obj) if type(obj) in (list, tuple) else [to_plain(v) for v in obj]
    if hasattr(obj, "to_ndarray"):  # mmdet BitmapMasks
        return obj.to_ndarray()
    return str(obj)  # anything else (e.g. a path object): its text


@METRICS.register_module()
class DumpPredictions(BaseMetric):
    """Collect every prediction (as :func:`to_plain` data) and pickle the list to ``out_file``.

    mmengine's Evaluator hands metrics OpenMMLab data samples already as dicts (``to_dict()``: the
    metainfo keys such as ``img_path``, ``ori_shape`` next to ``pred_instances``, ``pred_sem_seg``),
    so each entry is that dict, as in mmdet's own ``--out`` files, with numpy arrays for tensors.

    Returns no metric. ``tools/test.py --out FILE`` appends it to the test evaluator.
    """

    default_prefix = "dump"

    def __init__(self, out_file: Union[str, Path], collect_device: str = "cpu", **kwargs):
        if not str(out_file).endswith((".pkl", ".pickle")):
            raise ValueError(f"--out {str(out_file)!r}: the predictions are written as a pickle; name the file *.pkl")
        super().__init__(collect_device=collect_device, **kwargs)
        self.out_file = Path(out_file)

    def process(self, data_batch, data_samples: Sequence) -> None:
        self.results.extend(to_plain(s) for s in data_samples)

    def compute_metrics(self, results: List) -> Dict[str, float]:
        if is_main_process():
            self.out_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.out_file.with_suffix(self.out_file.suffix + ".tmp")
            with open(tmp, "wb") as f:
                pickle.dump(list(results), f, protocol=4)
            tmp.replace(self.out_file)
        return {}


def load_predictions(path: Union[str, Path]) -> List:
    """Read a ``--out`` file: a list with one dict per test sample (numpy arrays, no code run)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictions file {str(path)!r} does not exist (written by tools/test.py --out)")
    with open(path, "rb") as f:
        return load_arrays_only(f, what=f"predictions file {str(path)!r}")
