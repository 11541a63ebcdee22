"""Run a dense-prediction config for one training iteration and one inference on the sample sets."""
from pathlib import Path

import pytest
import torch

import visionattn  # noqa: F401  (registers the backbones with timm)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _shrink_pipeline(pipeline, size):
    """Replace the image scales of a pipeline (COCO 1333x800, ADE 2048x512) by ``size`` (w, h)."""
    for t in pipeline:
        if "scale" in t:
            t["scale"] = size
        if "scales" in t:
            t["scales"] = [size]
        if t.get("type") == "RandomCrop" and t.get("crop_type") == "absolute_range":
            t["crop_size"] = (size[1] // 2, size[1])
        elif t.get("type") == "RandomCrop":
            t["crop_size"] = (size[1], size[1])
        for sub in t.get("transforms", []):  # RandomChoice: a list of pipelines
            _shrink_pipeline(sub if isinstance(sub, list) else [sub], size)


def _fewer_boxes(cfg) -> None:
    """Fewer proposals/RoIs/detections (R-CNN heads dominate CPU time; the code paths stay the same)."""
    train, test = cfg.model.get("train_cfg") or {}, cfg.model.get("test_cfg") or {}
    if "rpn_proposal" in train:
        train.rpn_proposal.update(nms_pre=200, max_per_img=32)
    rcnn = train.get("rcnn")
    for stage in (rcnn if isinstance(rcnn, list) else [rcnn] if rcnn else []):
        stage.sampler.num = 16
    if "rpn" in test:
        test.rpn.update(nms_pre=200, max_per_img=32)
    if "rcnn" in test:
        test.rcnn.update(max_per_img=10, score_thr=0.0)  # untrained scores are low: keep boxes for the metric
    if "max_per_img" in test:  # one-stage detectors
        test.update(nms_pre=100, max_per_img=10, score_thr=0.0)


def shrink_config(cfg, data_root: Path, work_dir: Path, size=(128, 96), cfg_options=None):
    """Make ``cfg`` (an mmengine Config) run 1 train iteration + 1 val pass on CPU in seconds.

    Keeps the model, heads, losses, optimiser constructor and data pipeline of the recipe; shrinks the
    image scale, the dataset (2 train images, batch 2; 1 val image), turns AMP off (CPU) and drops
    checkpoint saving and visualisation. ``cfg_options``: dotted-key overrides, as ``--cfg-options``.
    """
    cfg.work_dir = str(work_dir)
    cfg.launcher = "none"
    cfg.env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
                       dist_cfg=dict(backend="gloo"))
    cfg.model.backbone.pop("pretrained", None)
    cfg.model.backbone.init_cfg = None  # random init: no download
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    _fewer_boxes(cfg)
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        dl = cfg[loader]
        dl.num_workers = 0
        dl.persistent_workers = False
        ds = dl.dataset
        ds = ds.dataset if "dataset" in ds else ds  # RepeatDataset
        ds.data_root = str(data_root)
        ds.indices = 2 if loader == "train_dataloader" else 1
        _shrink_pipeline(ds.pipeline, size)
    cfg.train_dataloader.batch_size = 2
    for ev in ("val_evaluator", "test_evaluator"):
        if "ann_file" in cfg[ev]:
            cfg[ev].ann_file = str(data_root / "annotations" / "instances_val2017.json")
    if "data_preprocessor" in cfg.model and "size" in cfg.model.data_preprocessor:
        cfg.model.data_preprocessor.size = (size[1], size[1])
    if cfg.optim_wrapper.get("type") == "AmpOptimWrapper":
        cfg.optim_wrapper.type = "OptimWrapper"
        cfg.optim_wrapper.pop("loss_scale", None)
    if cfg.train_cfg.get("type") == "IterBasedTrainLoop":
        cfg.train_cfg.update(max_iters=1, val_interval=1)
    else:
        cfg.train_cfg.update(max_epochs=1, val_interval=1)
    cfg.default_hooks.checkpoint = None
    cfg.default_hooks.pop("visualization", None)
    cfg.default_hooks.logger = dict(type="LoggerHook", interval=1)
    cfg.visualizer = dict(type="Visualizer", vis_backends=[])
    return cfg


@pytest.fixture
def run_config(tmp_path):
    """fn(config_name, data_root, **shrink_kwargs) -> (runner, val metrics) after 1 iteration + 1 val pass."""
    from mmengine.config import Config
    from mmengine.runner import Runner

    def run(name: str, data_root: Path, **kwargs):
        cfg = shrink_config(Config.fromfile(str(CONFIGS / name)), data_root, tmp_path, **kwargs)
        runner = Runner.from_cfg(cfg)
        runner.train()  # one iteration, then the val loop (inference + metric)
        return runner, runner.message_hub.log_scalars

    # Small convolutions run several times faster on one thread on a shared CPU.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield run
    torch.set_num_threads(threads)


@pytest.fixture
def shrunk_config(tmp_path):
    """fn(config_name, data_root, **shrink_kwargs) -> the config as :func:`shrink_config` makes it, not run."""
    from mmengine.config import Config

    def load(name: str, data_root: Path, **kwargs):
        return shrink_config(Config.fromfile(str(CONFIGS / name)), data_root, tmp_path / "work", **kwargs)

    return load
