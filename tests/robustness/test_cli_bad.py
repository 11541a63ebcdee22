"""Every CLI x bad arguments, run in-process: a user error ends with status 2 and one line on stderr
(``<program>: error: ...``) naming what was wrong, never a traceback; with ``--debug`` the same call
raises the library's own exception (not one escaping from torch, numpy, PIL or pickle). Argument
errors argparse catches itself (the programs share one parser class) are one line with status 2 too."""
import importlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from library_errors import raised_by_library
from visionattn.cli.console import program_name

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def files(tmp_path_factory, samples_root):
    """Paths the cases refer to by name."""
    d = tmp_path_factory.mktemp("cli")
    scene = samples_root / "middlebury" / "trainingQ" / "Adirondack"
    left = cv2.imread(str(scene / "im0.png"))
    cv2.imwrite(str(d / "small_right.png"), left[:100, :120])
    (d / "garbage.pth").write_bytes(b"this is not a checkpoint at all" * 10)
    torch.save({"state_dict": {"w": torch.zeros(2)}}, d / "whole.pth")
    (d / "truncated.pth").write_bytes((d / "whole.pth").read_bytes()[:300])
    png = (samples_root / "faces" / "celeba_test" / "lq")
    face = sorted(png.iterdir())[0]
    garbled = bytearray(face.read_bytes())
    garbled[64:] = np.random.default_rng(0).integers(0, 256, len(garbled) - 64, dtype=np.uint8).tobytes()
    (d / "garbled.png").write_bytes(bytes(garbled))
    nii = samples_root / "restoration_medical" / "restore_rwkv" / "MRI" / "test" / "LQ" / "MRI100.nii"
    (d / "truncated.nii").write_bytes(nii.read_bytes()[:400])
    np.zeros((16, 4), np.float32).tofile(d / "points.bin")
    (d / "config.py").write_text(
        f"_base_ = [{str(REPO / 'configs' / 'classification' / 'demo.py')!r}]\n"
        f"data_root = {str(samples_root / 'imagenet')!r}\nmodel = dict(network='test_resnet')\n")
    return dict(dir=d, left=scene / "im0.png", right=scene / "im1.png", small_right=d / "small_right.png",
                garbage=d / "garbage.pth", whole=d / "whole.pth", truncated=d / "truncated.pth", garbled=d / "garbled.png",
                face=face, nii=nii, points=d / "points.bin", truncated_nii=d / "truncated.nii", config=d / "config.py",
                missing=d / "missing.file")


# (program, argv with {placeholders}, strings the error must contain, kind: 'ours' or 'argparse')
CASES = [
    ("train", ["{missing}"], ["missing.file"], "ours"),
    ("train", ["{config}", "--cfg-options", "model..network=x"], ["model..network", "empty part"], "argparse"),
    ("train", ["{config}", "--cfg-options", "model.network"], ["model.network", "no '='"], "argparse"),
    ("train", ["{config}", "--cfg-options", ".lr=1"], [".lr"], "argparse"),
    ("train", ["{config}", "--resume", "{missing}"], ["missing.file", "--resume"], "ours"),
    ("train", ["{config}", "--launcher", "bogus"], ["bogus"], "argparse"),
    ("train", [], ["config"], "argparse"),
    ("test", ["{config}", "{missing}"], ["missing.file"], "ours"),
    ("test", ["{config}", "{garbage}"], ["garbage.pth", "not a checkpoint"], "ours"),
    ("test", ["{config}", "{truncated}"], ["truncated.pth", "truncated"], "ours"),
    ("test", ["{missing}", "{truncated}"], ["truncated.pth"], "ours"),
    ("zoo", ["download", "no_such_entry"], ["no_such_entry"], "ours"),
    ("zoo", ["unpin", "no_such_entry"], ["no_such_entry"], "ours"),
    ("zoo", ["frobnicate"], ["frobnicate"], "argparse"),
    ("benchmark", ["no_such_model_or_op", "--out", ""], ["no_such_model_or_op"], "ours"),
    ("benchmark", ["test_vit", "--iters", "0", "--out", ""], ["--iters"], "argparse"),
    ("benchmark", ["test_vit", "--official", "{missing}:fn", "--out", ""], ["missing.file"], "ours"),
    ("convert_checkpoint", ["no_such_family", "{whole}", "{dir}/out.pth"], ["no_such_family"], "ours"),
    ("convert_checkpoint", ["ffnet_1", "{missing}", "{dir}/out.pth"], ["missing.file"], "ours"),
    ("convert_checkpoint", ["ffnet_1", "{garbage}", "{dir}/out.pth"], ["garbage.pth"], "ours"),
    ("infer_stereo", ["{missing}", "{right}", "--random-weights"], ["missing.file"], "ours"),
    ("infer_stereo", ["{left}", "{right}", "--out", "{dir}/o"], ["--random-weights", "--checkpoint"], "ours"),
    ("infer_stereo", ["{left}", "{right}", "--checkpoint", "{garbage}", "--pretrained"], ["not both"], "ours"),
    ("infer_stereo", ["{left}", "{right}", "--checkpoint", "{missing}"], ["missing.file"], "ours"),
    ("infer_stereo", ["{left}", "{small_right}", "--random-weights", "--out", "{dir}/o"], ["differ in size"], "ours"),
    ("infer_stereo", ["{left}", "{right}", "--model", "no_such_model", "--random-weights"], ["no_such_model"], "ours"),
    ("infer_stereo", ["{left}", "{right}", "--model", "test_resnet", "--random-weights"], ["not a stereo model"], "ours"),
    ("infer_stereo", ["{garbled}", "{right}", "--random-weights"], ["garbled.png"], "ours"),
    ("infer_stereo", ["{left}", "{right}", "--dtype", "float8"], ["float8"], "argparse"),
    ("infer_stereo", ["{left}", "{right}", "--model", "no_such_model", "--random-weights", "--gt", "{missing}"],
     ["no_such_model"], "ours"),
    ("infer_restore", ["{missing}", "--random-weights"], ["missing.file"], "ours"),
    ("infer_restore", ["{nii}", "--out", "{dir}/o"], ["--random-weights", "--checkpoint"], "ours"),
    ("infer_restore", ["{nii}", "--axis", "5", "--random-weights"], ["--axis", "5"], "ours"),
    ("infer_restore", ["{nii}", "--modality", "XRAY", "--random-weights"], ["XRAY"], "ours"),
    ("infer_restore", ["{nii}", "--modality", "0,high", "--random-weights"], ["0,high"], "ours"),
    ("infer_restore", ["{nii}", "--tile", "0", "--random-weights"], ["--tile"], "ours"),
    ("infer_restore", ["{nii}", "--checkpoint", "{garbage}", "--model", "restore_rwkv_light"], ["garbage.pth"], "ours"),
    ("infer_restore", ["{truncated_nii}", "--random-weights", "--model", "restore_rwkv_light", "--out", "{dir}/o"],
     ["truncated.nii"], "ours"),
    ("infer_restore", ["{nii}", "--axis", "x"], ["--axis"], "argparse"),
    ("infer_face", ["{missing}", "--random-weights"], ["missing.file"], "ours"),
    ("infer_face", ["{face}", "--out", "{dir}/o"], ["--random-weights", "--pretrained"], "ours"),
    ("infer_face", ["{face}", "--pretrained", "no_such_entry"], ["no_such_entry"], "ours"),
    ("infer_face", ["{face}", "--pretrained", "--checkpoint", "{garbage}"], ["not both"], "ours"),
    ("infer_face", ["{face}", "--checkpoint", "{garbage}"], ["garbage.pth"], "ours"),
    ("infer_face", ["{face}", "--random-weights", "--upscale", "0", "--model-kwargs", "ch=32",
                    "ch_mult=(1,1,1,1,1,1)", "num_res_blocks=1", "z_channels=32", "embed_dim=32", "n_embed=64",
                    "--device", "cpu"], ["--upscale"], "ours"),
    ("infer_face", ["{face}", "--dtype", "int8"], ["int8"], "argparse"),
    ("infer_lidar", ["{points}"], ["--random-weights", "--checkpoint"], "ours"),
    ("infer_lidar", ["{points}", "--random-weights", "--gt", "{missing}"], ["--calib"], "ours"),
    ("infer_lidar", ["{points}", "--random-weights", "--score-thr", "2"], ["--score-thr"], "ours"),
    ("infer_lidar", ["{points}", "--checkpoint", "{garbage}", "--pretrained"], ["not both"], "ours"),
    ("infer_lidar", ["{points}", "--image-shape", "3"], ["--image-shape"], "argparse"),
    ("visualize_attention", ["biformer", "{missing}", "--out-dir", "{dir}/v"], ["missing.file"], "ours"),
    ("visualize_attention", ["nofamily"], ["nofamily"], "argparse"),
]


def _argv(template, files):
    return [a.format(**{k: str(v) for k, v in files.items()}) for a in template]


def _run(main, argv):
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code


@pytest.mark.parametrize("prog,template,names,kind", CASES,
                         ids=[f"{c[0]}:{' '.join(c[1])[:60]}" for c in CASES])
def test_bad_arguments(prog, template, names, kind, files, capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("VISIONATTN_DEBUG", raising=False)
    monkeypatch.setenv("VISIONATTN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VISIONATTN_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    main = importlib.import_module(f"visionattn.cli.{prog}").main
    argv = _argv(template, files)
    code = _run(main, argv)
    out, err = capsys.readouterr()
    assert code == 2, f"exit status {code}; stderr: {err[-2000:]}"
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got {len(lines)}: {err[-2000:]}"
    if kind == "ours":
        assert lines[0].startswith(f"{program_name('visionattn.cli.' + prog)}: error: ")
    else:  # argparse's own checks, through the shared parser: one line too
        assert ": error: " in lines[0] and lines[0].endswith("(--help shows the usage)")
    missing = [n for n in names if n not in lines[-1]]
    assert not missing, f"the error does not name {missing}: {lines[-1]}"
    if kind == "ours":  # --debug: the exception itself, raised by the library's own words
        with pytest.raises(Exception) as info:
            main(argv + ["--debug"])
        ok, where = raised_by_library(info.value)
        assert ok, f"{type(info.value).__name__} escaped from {where}: {info.value}"


def test_debug_from_the_environment(files, monkeypatch, capsys):
    from visionattn.cli import infer_restore

    monkeypatch.setenv("VISIONATTN_DEBUG", "1")
    with pytest.raises(FileNotFoundError, match="missing.file"):
        infer_restore.main([str(files["missing"]), "--random-weights"])


def test_every_program_uses_the_shared_error_handling():
    """Each installed program's main is wrapped by cli_main (one mechanism)."""
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    scripts = [line.split("=")[1].strip() for line in cfg["options.entry_points"]["console_scripts"].splitlines()
               if line.strip()]
    from visionattn.cli import console

    programs = {"visualize_attention"}  # run as python -m visionattn.cli.visualize_attention, not installed
    for target in scripts:
        module, func = target.split(":")
        assert module == "visionattn.cli.console"
        programs.add(getattr(console, func).__name__)
    for name in programs:
        module = importlib.import_module(f"visionattn.cli.{name}")
        assert getattr(module.main, "__wrapped__", None) is not None, f"visionattn.cli.{name}.main is not cli_main-wrapped"
    assert programs >= {c[0] for c in CASES}


def test_cfg_options_keys_are_checked_against_the_config(files):
    """A typo in a --cfg-options key warns with the closest existing key; an empty part is an error."""
    from visionattn.engine.launch import check_cfg_options, load_config

    with pytest.warns(UserWarning, match=r"'model.netwrk' matches no key.*did you mean 'model.network'"):
        cfg = load_config(str(files["config"]), cfg_options={"model.netwrk": "x"})
    assert cfg.model.netwrk == "x"  # still applied, as mmengine does: a new key may be intended
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_config(str(files["config"]), cfg_options={"model.network": "test_vit",
                                                       "train_dataloader.dataset.transform.input_size": 48})
    for bad in ("model..network", ".model", "model.", ""):
        with pytest.raises(ValueError, match="malformed"):
            check_cfg_options(cfg, {bad: 1})
