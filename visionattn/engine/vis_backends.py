"""mmengine visualisation backends of visionattn.

:class:`OptionalTensorboardVisBackend` lets the runtime base list TensorBoard without making it a
dependency: with ``tensorboard`` installed it is mmengine's ``TensorboardVisBackend`` (event files
in ``<work_dir>/<timestamp>/vis_data``); without it, it writes nothing and warns once, naming the
package to install, instead of failing the run at its first logged scalar.
"""
import importlib.util
import warnings

from mmengine.visualization import TensorboardVisBackend

from ..registry import VISBACKENDS


class _NoWriter:
    """Stands in for tensorboard's SummaryWriter when tensorboard is not installed."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


@VISBACKENDS.register_module()
class OptionalTensorboardVisBackend(TensorboardVisBackend):
    """mmengine's TensorboardVisBackend if ``tensorboard`` is installed, else a silent backend (one warning)."""

    @staticmethod
    def available() -> bool:
        return importlib.util.find_spec("tensorboard") is not None

    def _init_env(self):
        if self.available():
            super()._init_env()
            return
        warnings.warn("TensorBoard logging is off: the tensorboard package is not installed "
                      "(pip install tensorboard); scalars and images still go to vis_data/ (LocalVisBackend) "
                      "and training_curves.png", stacklevel=2)
        self._tensorboard = _NoWriter()
