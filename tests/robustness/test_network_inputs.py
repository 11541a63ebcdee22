"""Every registered network x bad inputs, and x bad constructor arguments: each must fail with the
library's own message (ValueError/TypeError raised by visionattn, see ``library_errors.py``).

Networks are ``visionattn.list_models()`` (timm backbones and task networks), built once per module
at a tiny size of their family (the input check runs before any layer, so the size does not
matter) from a valid example input: the timm ``input_size`` or the network's ``example_inputs``.
Bad inputs are derived from that example in a loop (rank, empty batch, channels, channels-last,
dtype, device, sizes the network cannot take, non-tensors). Constructor cases are generated per
family from the arguments each family reads.
"""
import functools
import sys
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from library_errors import expect_library_error  # noqa: E402

import visionattn  # noqa: E402
from visionattn.factory import model_family  # noqa: E402
from visionattn.registry import NETWORKS  # noqa: E402

MODELS = visionattn.list_models()

# Tiny layouts per family (same code paths, seconds to build on a CPU).
TINY: Dict[str, Dict] = {
    "biformer": dict(depths=(1, 1, 1, 1), dims=(32, 32, 32, 32), head_dim=16),
    "ffnet": dict(depths=(1, 1, 1, 1), dims=(8, 16, 16, 16), stem_chs=8),
    "gqa_vit": dict(depth=1, embed_dim=96),
    "matchstereo": dict(depths=(1, 1, 1, 1), num_layers=(1, 1, 1, 1)),
    "restore_rwkv": dict(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1),
    "restoreformer": dict(ch=32, ch_mult=(1, 1, 1, 1, 1, 1), num_res_blocks=1, n_embed=16, embed_dim=32, z_channels=32),
    "scatterformer": {},  # each network's smoke_kwargs
}
# Bad constructor arguments per family: (case, kwargs).
BAD_KWARGS: Dict[str, List[Tuple[str, Dict]]] = {
    "biformer": [("num_classes=-3", dict(num_classes=-3)), ("drop_path_rate=2.0", dict(drop_path_rate=2.0)),
                 ("in_chans=0", dict(in_chans=0)), ("n_win=0", dict(n_win=0)), ("head_dim=0", dict(head_dim=0)),
                 ("head_dim=24 (dims 32)", dict(head_dim=24)), ("topks[0]=0", dict(topks=(0, 4, 16, -1))),
                 ("depths of 3 stages", dict(depths=(1, 1, 1))), ("drop_rate=-0.1", dict(drop_rate=-0.1)),
                 ("attn_impl='cuda'", dict(attn_impl="cuda")), ("mlp_ratio=0", dict(mlp_ratio=0))],
    "ffnet": [("num_classes=-3", dict(num_classes=-3)), ("drop_path_rate=2.0", dict(drop_path_rate=2.0)),
              ("in_chans=0", dict(in_chans=0)), ("dims[1]=0", dict(dims=(8, 0, 16, 16))),
              ("ffn_kernels even", dict(ffn_kernels=(4, 3, 3, 3))), ("stem_chs=0", dict(stem_chs=0)),
              ("global_pool='max'", dict(global_pool="max")), ("epilogue_impl='cuda'", dict(epilogue_impl="cuda")),
              ("mlp_ratio=-1", dict(mlp_ratio=-1.0))],
    "gqa_vit": [("num_classes=-3", dict(num_classes=-3)), ("drop_path_rate=2.0", dict(drop_path_rate=2.0)),
                ("in_chans=0", dict(in_chans=0)), ("num_heads=5 (embed_dim 96)", dict(num_heads=5)),
                ("num_kv_heads=0", dict(num_kv_heads=0)), ("depth=0", dict(depth=0)),
                ("img_size=100 (patch 16)", dict(img_size=100))],
    "matchstereo": [("drop_path_rate=2.0", dict(drop_path_rate=2.0)), ("num_heads=(3, 3, 3, 3)", dict(num_heads=(3, 3, 3, 3))),
                    ("radii=(-1, 2, 1, 1)", dict(radii=(-1, 2, 1, 1))), ("num_layers=(0, 1, 1, 1)", dict(num_layers=(0, 1, 1, 1))),
                    ("depths of 3 levels", dict(depths=(1, 1, 1))), ("task='depth'", dict(task="depth")),
                    ("consistency_threshold=0", dict(consistency_threshold=0)), ("attn_impl='cuda'", dict(attn_impl="cuda"))],
    "restore_rwkv": [("in_chans=0", dict(in_chans=0)), ("out_chans=0", dict(out_chans=0)), ("dim=7", dict(dim=7)),
                     ("num_blocks of 3 levels", dict(num_blocks=(1, 1, 1))), ("recurrence=0", dict(recurrence=0)),
                     ("wkv_impl='cuda'", dict(wkv_impl="cuda")), ("tile=256 (an inference setting)", dict(tile=256))],
    "restoreformer": [("in_channels=0", dict(in_channels=0)), ("num_heads=3 (width 32)", dict(num_heads=3)),
                      ("ch=48 (GroupNorm of 32)", dict(ch=48)), ("n_embed=0", dict(n_embed=0)),
                      ("num_res_blocks=0", dict(num_res_blocks=0)), ("beta=-1", dict(beta=-1.0)),
                      ("decoder_attn_resolutions=(17,)", dict(decoder_attn_resolutions=(17,)))],
    "scatterformer": [("num_heads=3 (dim 128)", dict(num_heads=3)), ("voxel_size with 0", dict(voxel_size=(0.0, 0.32, 0.1875))),
                      ("point_cloud_range inverted", dict(point_cloud_range=(9.6, -4.8, -3.0, 0.0, 4.8, 1.0))),
                      ("num_point_features=2", dict(num_point_features=2)), ("class_names=()", dict(class_names=())),
                      ("score_threshold=1.5", dict(score_threshold=1.5)), ("attn_impl='cuda'", dict(attn_impl="cuda"))],
}
TIMM_FAMILIES = ("biformer", "ffnet", "gqa_vit")


def tiny(name: str) -> Dict:
    """The tiny layout of ``name``: its family's, or the registry's smoke_kwargs (LiDAR grids)."""
    if name in NETWORKS and NETWORKS[name].info.get("smoke_kwargs"):
        return dict(NETWORKS[name].info["smoke_kwargs"])
    return dict(TINY[_family(name)])


def _family(name: str) -> str:
    family = model_family(name)
    return "gqa_vit" if family.endswith("gqa_vit") else family.rsplit(".", 1)[-1]


@functools.lru_cache(maxsize=None)
def built(name: str):
    """(model in eval mode, valid example inputs) for ``name``, built once per module."""
    torch.manual_seed(0)
    model = visionattn.create_model(name, **tiny(name)).eval()
    if name in NETWORKS:
        inputs = NETWORKS[name].example_inputs(1)
        inputs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    else:
        inputs = (torch.randn(1, *model.pretrained_cfg["input_size"]),)
    return model, inputs


def _image_cases(name: str) -> List[Tuple[str, Callable]]:
    """(case, fn(x) -> bad x) for a network whose first input is an image batch (B, C, H, W)."""
    family = _family(name)
    cases = [
        ("3-D image (no batch axis)", lambda x: x[0]),
        ("2-D image", lambda x: x[0, 0]),
        ("5-D tensor", lambda x: x[None]),
        ("empty batch", lambda x: x[:0]),
        ("one channel too many", lambda x: torch.cat([x, x[:, :1]], 1)),
        ("channels-last (B, H, W, C)", lambda x: x.permute(0, 2, 3, 1)),
        ("numpy array", lambda x: x.numpy()),
        ("nested list", lambda x: x.tolist()),
        ("on another device (meta)", lambda x: x.to("meta")),
        ("int64 tensor", lambda x: x.long()),
    ]
    if family != "matchstereo":  # MatchStereo takes uint8 and float64 pairs in [0, 255] (cast inside)
        cases += [("uint8 image", lambda x: x.clamp(0, 1).mul(255).to(torch.uint8)),
                  ("float64 image", lambda x: x.double()),
                  ("float16 image for a float32 network", lambda x: x.half())]
    if family == "gqa_vit":
        cases += [("223x224 (fixed 224)", lambda x: x[..., 1:, :]), ("256x256 (fixed 224)",
                                                                        lambda x: torch.nn.functional.pad(x, (16, 16, 16, 16)))]
    if family in ("matchstereo", "restore_rwkv", "restoreformer"):
        cases += [("width not a multiple", lambda x: x[..., :-3])]
    if family == "matchstereo":
        cases += [("smaller than the minimum size", lambda x: x[..., :160, :160])]
    return cases


def _points_cases() -> List[Tuple[str, Callable]]:
    return [("1-D points", lambda p: p[:, 0]), ("one feature column too few", lambda p: p[:, :-1]),
            ("int64 points", lambda p: p.long()), ("float64 points", lambda p: p.double()),
            ("numpy array", lambda p: p.numpy()), ("on another device (meta)", lambda p: p.to("meta"))]


def _input_cases():
    out = []
    for name in MODELS:
        family = _family(name)
        if family == "scatterformer":
            out += [(name, case, fn, "points") for case, fn in _points_cases()]
            out += [(name, "batch_size=-1", None, "batch_size"), (name, "mode='boxes'", None, "mode")]
            continue
        out += [(name, case, fn, "image") for case, fn in _image_cases(name)]
        if family == "matchstereo":
            out.append((name, "right view of another size", None, "pair"))
    return out


INPUT_CASES = _input_cases()
CTOR_CASES = [(name, case, kwargs) for name in MODELS for case, kwargs in BAD_KWARGS[_family(name)]
              if not (case.startswith("num_classes") and _family(name) not in TIMM_FAMILIES)]


def test_every_family_is_covered():
    families = {_family(n) for n in MODELS}
    assert families <= set(TINY) and families <= set(BAD_KWARGS), f"add tiny kwargs/cases for {families - set(TINY)}"


@pytest.mark.parametrize("name, case, fn, kind", INPUT_CASES,
                         ids=[f"{i + 1}/{len(INPUT_CASES)}-{n}-{c}" for i, (n, c, _, _) in enumerate(INPUT_CASES)])
def test_bad_input_is_named(name, case, fn, kind):
    model, inputs = built(name)
    args = list(inputs)
    kwargs = {}
    if kind in ("image", "points"):
        args[0] = fn(args[0])
        if _family(name) == "matchstereo":
            args[1] = fn(args[1]) if case not in ("on another device (meta)",) else args[1]
    elif kind == "pair":
        args[1] = args[1][..., :, :-32]
    elif kind == "batch_size":
        args, kwargs = [args[0]], dict(batch_size=-1)
    elif kind == "mode":
        args, kwargs = [args[0]], dict(mode="boxes")
    with torch.no_grad():
        expect_library_error(lambda: model(*args, **kwargs))


@pytest.mark.parametrize("name, case, kwargs", CTOR_CASES,
                         ids=[f"{i + 1}/{len(CTOR_CASES)}-{n}-{c}" for i, (n, c, _) in enumerate(CTOR_CASES)])
def test_bad_constructor_argument_is_named(name, case, kwargs):
    err = expect_library_error(lambda: visionattn.create_model(name, **{**tiny(name), **kwargs}))
    key = case.split("=")[0].split(" ")[0].split("[")[0]
    if "=" in case:
        assert key in str(err), f"the message does not name the argument {key!r}: {err}"


@pytest.mark.parametrize("bad", [None, 123, "ffnet_1.pth", "/tmp/weights/ffnet_1.pth.tar", "https://example.com/m.pth",
                                 "", Path("ffnet_1.pth")], ids=repr)
def test_create_model_name_is_checked(bad):
    expect_library_error(lambda: visionattn.create_model(bad))


def test_case_count():
    total = len(INPUT_CASES) + len(CTOR_CASES) + 7
    print(f"\nrobustness: {len(INPUT_CASES)} network x bad-input cases and {len(CTOR_CASES)} network x bad-argument "
          f"cases over {len(MODELS)} networks (+7 create_model names) = {total}")
    assert len(MODELS) >= 30


@pytest.mark.cuda
@pytest.mark.parametrize("family", sorted(TINY))
def test_cuda_autocast_and_bfloat16_inputs_pass_the_check(family):
    """The check must not refuse what mixed precision feeds a network: float32 inputs under autocast,
    bfloat16 inputs to a bfloat16 network (LiDAR points stay float32)."""
    name = next(n for n in MODELS if _family(n) == family)
    model, inputs = built(name)
    model = model.cuda()
    cuda_inputs = tuple(t.cuda() if isinstance(t, torch.Tensor) else t for t in inputs)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        model(*cuda_inputs)
    model = model.to(torch.bfloat16)
    cast = tuple(t.to(torch.bfloat16) if isinstance(t, torch.Tensor) and family != "scatterformer" else t
                 for t in cuda_inputs)
    with torch.no_grad():
        model(*cast)
    model.float().cpu()
