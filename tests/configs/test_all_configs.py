"""Every file under configs/ loads with mmengine and follows the rules of configs/README.md.

Parsed only (no model, dataset or hook is built), without the configs' ``custom_imports``: loading a
detection/segmentation config reads mmdet's/mmseg's installed base files but imports neither.
"""
import collections
import functools
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from mmengine.config import Config

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
TASKS = ("classification", "detection", "segmentation", "stereo", "restoration", "detection3d")
ALL = sorted(CONFIGS.rglob("*.py"))
# configs/<name>.py at the top: the names users typed before the task folders; each only inherits
# configs/classification/<name>.py.
TOP_LEVEL = sorted(p for p in ALL if p.parent == CONFIGS)
LOADERS = ("train_dataloader", "val_dataloader", "test_dataloader")
EVALUATORS = ("val_evaluator", "test_evaluator")


@pytest.fixture(autouse=True, scope="module")
def _read_package_metadata_once():
    """For every 'mmdet::'/'mmseg::' base, mmengine reloads pkg_resources and re-reads the package's ~100
    metafiles (1-2 s per base); neither changes during the test run, so read each once."""
    import mmengine.config.config as mm_config
    import mmengine.config.utils as mm_config_utils

    original = mm_config_utils.load
    read_yaml = functools.lru_cache(maxsize=None)(original)

    def load(file, *args, **kwargs):  # only _get_cfg_metainfo calls this name; it reads YAML metafiles
        if not args and not kwargs and isinstance(file, str) and file.endswith((".yml", ".yaml")):
            return read_yaml(file)
        return original(file, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mm_config, "is_installed", functools.lru_cache(maxsize=None)(mm_config.is_installed))
        mp.setattr(mm_config_utils, "load", load)
        yield


def _load(path: Path) -> Config:
    try:
        return Config.fromfile(str(path), import_custom_modules=False)
    except ModuleNotFoundError as err:  # mmengine: "<pkg> is not installed" for an 'mmdet::' base
        missing = [pkg for pkg in ("mmdet", "mmseg") if pkg in str(err) and importlib.util.find_spec(pkg) is None]
        if missing:
            pytest.skip(f"{path.relative_to(CONFIGS)} inherits from {missing[0]}, which is not installed (det extra)")
        raise


def hook_types(cfg) -> list:
    """Type names of every hook the Runner would register: default_hooks (None = removed) + custom_hooks."""
    hooks = [h for h in (cfg.get("default_hooks") or {}).values() if h is not None]
    hooks += list(cfg.get("custom_hooks") or [])
    names = []
    for hook in hooks:
        kind = hook["type"]
        kind = kind if isinstance(kind, str) else kind.__name__
        names.append(kind.rsplit(".", 1)[-1])  # 'mmdet.DetVisualizationHook' -> 'DetVisualizationHook'
    return names


def data_paths(cfg) -> list:
    """(where, path) of every dataset root in the dataloaders (nested wrappers included), the top-level
    ``data_root`` and the evaluators' annotation files."""
    found = []

    def walk(node, where):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("root", "data_root") and isinstance(value, str):
                    found.append((f"{where}.{key}", value))
                else:
                    walk(value, f"{where}.{key}")
        elif isinstance(node, (list, tuple)):
            for i, value in enumerate(node):
                walk(value, f"{where}[{i}]")

    for name in LOADERS:
        walk(cfg.get(name), name)
    for name in EVALUATORS:
        evaluators = cfg.get(name)
        for i, evaluator in enumerate(evaluators if isinstance(evaluators, list) else [evaluators]):
            if isinstance(evaluator, dict) and isinstance(evaluator.get("ann_file"), str):
                found.append((f"{name}[{i}].ann_file", evaluator["ann_file"]))
    if isinstance(cfg.get("data_root"), str):
        found.append(("data_root", cfg.data_root))
    return found


def test_the_glob_finds_the_recipes():
    names = {str(p.relative_to(CONFIGS)) for p in ALL}
    assert {"classification/biformer_s.py", "detection/maskrcnn_biformer_s_1x_coco.py",
            "segmentation/upernet_ffnet_2_160k_ade20k.py", "stereo/matchstereo_t_sceneflow.py",
            "restoration/restore_rwkv_mri_sr4.py", "biformer_s.py"} <= names


@pytest.mark.parametrize("path", ALL, ids=[str(p.relative_to(CONFIGS)) for p in ALL])
def test_config(path):
    cfg = _load(path)
    repeated = sorted(t for t, n in collections.Counter(hook_types(cfg)).items() if n > 1)
    assert not repeated, f"hook types registered twice (default_hooks + custom_hooks): {repeated}"
    outside = [(where, p) for where, p in data_paths(cfg) if not p.startswith("datasets/")]
    assert not outside, f"dataset paths must default under datasets/<name>/ (override with --cfg-options): {outside}"


def test_folder_rule():
    """Recipes live in a task folder; `_base_/` holds the shared pieces; the top level holds only the old names."""
    for path in ALL:
        parts = path.relative_to(CONFIGS).parts
        assert len(parts) == 1 or parts[0] == "_base_" or parts[0] in TASKS, \
            f"{path.relative_to(CONFIGS)}: put recipes under configs/<task>/ with task in {TASKS}"
        if len(parts) > 1 and parts[0] == "_base_":
            assert parts[1] in ("datasets", "models", "schedules", "runtime"), path


@pytest.mark.parametrize("path", TOP_LEVEL, ids=[p.name for p in TOP_LEVEL])
def test_top_level_name_is_the_classification_recipe(path):
    recipe = CONFIGS / "classification" / path.name
    assert recipe.is_file(), f"{path.name} should only inherit classification/{path.name}"
    assert _load(path).to_dict() == _load(recipe).to_dict()


def test_checks_catch_a_broken_config(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text(
        f"_base_ = [{str(CONFIGS / '_base_/runtime/default.py')!r}]\n"
        "custom_hooks = [dict(type='RandomStateHook'), dict(type='EMAHook')]\n"
        "train_dataloader = dict(dataset=dict(type='RepeatDataset', dataset=dict(root='/data/imagenet')))\n")
    cfg = _load(broken)
    assert collections.Counter(hook_types(cfg))["RandomStateHook"] == 2
    assert data_paths(cfg) == [("train_dataloader.dataset.dataset.root", "/data/imagenet")]


@pytest.mark.skipif(importlib.util.find_spec("mmdet") is None or importlib.util.find_spec("mmseg") is None,
                    reason="the det extra (mmdet, mmsegmentation) is not installed")
def test_dense_configs_load_without_importing_mmdet():
    dense = [str(CONFIGS / "detection/maskrcnn_biformer_s_1x_coco.py"),  # every mmdet/mmseg base is reached
             str(CONFIGS / "segmentation/upernet_ffnet_2_160k_ade20k.py")]
    code = ("import sys\nfrom mmengine.config import Config\n"
            f"for p in {dense!r}:\n    Config.fromfile(p, import_custom_modules=False)\n"
            "print(sorted(m for m in ('mmdet', 'mmseg', 'mmcv') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
