"""tools/test.py --out / --show-dir / --tta and tools/train.py --auto-scale-lr, on the sample data."""
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from visionattn.visualization import predictions as drawing
from visionattn.engine.hooks import ShowPredictionsHook
from visionattn.evaluation.dump_predictions import load_predictions, to_plain

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def trained(load_tool, tiny_config, tmp_path):
    """(config, checkpoint) of the tiny classifier after one iteration."""
    cfg = tiny_config("train_cfg = dict(max_iters=1, val_interval=100)\n"
                      "default_hooks = dict(checkpoint=dict(interval=1))\n")
    load_tool("train").main([str(cfg), "--work-dir", str(tmp_path / "work")])
    return cfg, tmp_path / "work" / "iter_1.pth"


def test_out_and_show_dir_for_classification(load_tool, trained, tmp_path):
    cfg, ckpt = trained
    out, show = tmp_path / "preds.pkl", tmp_path / "show"
    metrics = load_tool("test").main([str(cfg), str(ckpt), "--work-dir", str(tmp_path / "t"), "--out", str(out),
                                      "--show-dir", str(show)])
    preds = load_predictions(out)  # numpy-only unpickler: no code runs; one entry per validation image
    assert len(preds) == 80 and all(isinstance(p["pred_score"], np.ndarray) for p in preds)
    assert preds[0]["pred_score"].shape == (8,) and preds[0]["pred_label"] == int(preds[0]["pred_score"].argmax())
    top1 = np.mean([p["pred_label"] == p["gt_label"] for p in preds]) * 100
    assert metrics["accuracy/top1"] == pytest.approx(top1)  # the file holds the predictions that were scored
    pictures = sorted(show.glob("*.png"))
    assert len(pictures) == len(preds)  # one per test image
    with Image.open(pictures[0]) as im:
        assert im.width >= 200 and im.height > 256  # enlarged image + five text lines under it


def test_tta_without_tta_config_names_the_config(load_tool, trained, capsys):
    cfg, ckpt = trained
    assert load_tool("test").main([str(cfg), str(ckpt), "--tta"]) == 2
    assert re.search(f"{cfg.name}.*tta_model and no tta_pipeline", capsys.readouterr().err)


def test_tta_wraps_model_and_pipeline():
    from mmengine.config import Config

    from visionattn.cli.test import apply_test_options

    cfg = Config(dict(model=dict(type="Net"), tta_model=dict(type="SegTTAModel"),
                      tta_pipeline=[dict(type="TestTimeAug")], work_dir="w",
                      test_dataloader=dict(dataset=dict(pipeline=[dict(type="Load")])),
                      test_evaluator=dict(type="IoUMetric")))
    apply_test_options(cfg, "x.py", out="r.pkl", show_dir="pics", tta=True)
    assert cfg.model.type == "SegTTAModel" and cfg.model.module.type == "Net"
    assert cfg.test_dataloader.dataset.pipeline == [dict(type="TestTimeAug")]
    assert [e["type"] for e in cfg.test_evaluator] == ["IoUMetric", "visionattn.DumpPredictions"]
    assert cfg.custom_hooks[0]["out_dir"].endswith("w/pics")


def test_dump_rejects_a_non_pickle_name():
    from visionattn.evaluation.dump_predictions import DumpPredictions

    with pytest.raises(ValueError, match="results.json"):
        DumpPredictions("results.json")


def test_to_plain_turns_data_samples_into_dicts():
    pytest.importorskip("mmdet")
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    sample = DetDataSample(metainfo=dict(img_path="a.jpg", ori_shape=(4, 5)))
    sample.pred_instances = InstanceData(bboxes=torch.zeros(2, 4), scores=torch.ones(2), labels=torch.tensor([1, 3]))
    plain = to_plain(sample)
    assert plain["metainfo"] == dict(img_path="a.jpg", ori_shape=(4, 5))
    assert plain["pred_instances"]["labels"].tolist() == [1, 3]


# --- the pictures of each task --------------------------------------------------------------------

def _hook_picture(sample, inputs, tmp_path, class_names=None):
    hook = ShowPredictionsHook(str(tmp_path / "show"), score_thr=0.5)
    hook.class_names = class_names
    hook.after_test_iter(None, 0, dict(inputs=inputs), [sample])
    (path,) = list((tmp_path / "show").glob("*.png"))
    return np.asarray(Image.open(path).convert("RGB"))


def test_detection_picture_has_boxes_above_the_threshold(tmp_path):
    pytest.importorskip("mmdet")
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    sample = DetDataSample(metainfo=dict(img_path=str(tmp_path / "missing.jpg")))
    masks = torch.zeros(2, 40, 60, dtype=torch.bool)
    masks[0, 25:35, 40:55] = True
    sample.pred_instances = InstanceData(bboxes=torch.tensor([[5.0, 5, 20, 20], [30, 18, 50, 38]]),
                                         scores=torch.tensor([0.9, 0.2]), labels=torch.tensor([0, 1]), masks=masks)
    pic = _hook_picture(sample, torch.zeros(1, 3, 40, 60), tmp_path)
    colour = drawing.palette(2)[0]
    assert (pic[5, 5:21] == colour).all() and (pic[5:21, 20] == colour).all()  # box edges, label 0's colour
    assert (pic[19:38, 30] == 0).all()  # score 0.2 < 0.5: its left edge is not drawn
    assert (pic[30, 45] == (colour.astype(float) * 0.5).astype(np.uint8)).all()  # mask blended (on black)


def test_segmentation_picture_colours_each_class(tmp_path):
    pytest.importorskip("mmseg")
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    seg = torch.zeros(1, 8, 8, dtype=torch.long)
    seg[0, :, 4:] = 2
    sample = SegDataSample()
    sample.pred_sem_seg = PixelData(data=seg)
    image = torch.full((1, 3, 8, 8), 200, dtype=torch.uint8)
    pic = _hook_picture(sample, image, tmp_path, class_names=["a", "b", "c"])
    colours = drawing.palette(3).astype(float)
    np.testing.assert_array_equal(pic[0, 0], (0.5 * 200 + 0.5 * colours[0]).astype(np.uint8))
    np.testing.assert_array_equal(pic[0, 7], (0.5 * 200 + 0.5 * colours[2]).astype(np.uint8))


def test_disparity_picture_is_left_image_and_colour_map(tmp_path):
    disp = torch.arange(16.0).repeat(8, 1)  # (8, 16), growing to the right
    pair = torch.zeros(1, 2, 3, 8, 16)
    pair[0, 0] = 255.0  # white left image, black right
    pic = _hook_picture(dict(pred_disp=disp), pair, tmp_path)
    assert pic.shape == (8, 16 + 4 + 16, 3)
    assert (pic[:, :16] == 255).all()
    cmap = pic[0, 20:]
    brightness = cmap.astype(int).sum(-1)
    assert (np.diff(brightness) > 0).all()  # magma: larger disparity is brighter
    np.testing.assert_array_equal(cmap, drawing.colourise(disp)[0])


def test_restoration_picture_is_input_restored_target(tmp_path):
    lq, pred, gt = torch.zeros(3, 6, 6), torch.full((3, 6, 6), 0.5), torch.ones(3, 6, 6)
    pic = _hook_picture(dict(pred=pred, gt=gt, name="slice_07.png"), lq[None], tmp_path)
    assert pic.shape == (6, 6 * 3 + 8, 3)
    assert (pic[:, :6] == 0).all() and (pic[:, 10:16] == 128).all() and (pic[:, 20:] == 255).all()
    assert (tmp_path / "show" / "slice_07.png").is_file()


def test_classification_picture_lists_top5(tmp_path):
    scores = torch.tensor([0.05, 0.5, 0.1, 0.15, 0.2])
    pic = drawing.draw_classification(torch.zeros(3, 32, 32), scores, [f"c{i}" for i in range(5)])
    assert pic.shape[0] == 256 + 5 * 12 + 6  # 32 px enlarged x8, one text line per class
    assert pic[256:].any()  # text drawn under the image


def test_unknown_prediction_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="fields \\['depth'\\]"):
        _hook_picture(dict(depth=torch.zeros(2, 2)), torch.zeros(1, 3, 2, 2), tmp_path)


def test_auto_scale_lr(load_tool, tiny_config, tmp_path, capsys):
    """lr x (1 process x batch 4) / base_batch_size 16 = lr / 4, as mmengine's linear rule."""
    cfg = tiny_config("train_cfg = dict(max_iters=1, val_interval=100)\n"
                      "auto_scale_lr = dict(enable=False, base_batch_size=16)\n")
    train = load_tool("train")
    runner = train.main([str(cfg), "--work-dir", str(tmp_path / "a"), "--auto-scale-lr"])
    lr = runner.optim_wrapper.optimizer.param_groups[0]["initial_lr"]
    assert lr == pytest.approx(2e-3 * 4 / 16)  # demo.py's AdamW lr 2e-3
    plain = tiny_config("", name="plain.py")
    assert train.main([str(plain), "--work-dir", str(tmp_path / "b"), "--auto-scale-lr"]) == 2
    assert re.search("plain.py.*base_batch_size", capsys.readouterr().err)


def test_training_logs_to_mmengine_vis_backends(trained, tmp_path):
    """The runtime base's LocalVisBackend gets the scalars and the training-curves image; the TensorBoard
    backend is there too (silent, with a warning, when tensorboard is not installed)."""
    import json

    (vis,) = (tmp_path / "work").glob("*/vis_data")
    scalars = [json.loads(line) for line in (vis / "scalars.json").read_text().splitlines()]
    assert any("accuracy/top1" in s for s in scalars)  # the validation metrics
    assert list((vis / "vis_image").glob("training_curves_*.png"))


def test_runs_of_one_config_in_one_process_keep_their_own_logs(load_tool, tiny_config, tmp_path, monkeypatch):
    """Two runs of the same config started in the same second by one process: mmengine would give both
    the same logger and visualizer (named after the config and the second); each must write its own."""
    import time
    from types import SimpleNamespace

    import mmengine.runner.runner as mm_runner

    # both runs start in the same second (the Runner reads its start time from this module's time.time)
    clock = SimpleNamespace(time=lambda: 1.8e9, localtime=time.localtime, strftime=time.strftime)
    monkeypatch.setattr(mm_runner, "time", clock)
    cfg = tiny_config("train_cfg = dict(max_iters=1, val_interval=100)\n")
    train = load_tool("train")
    runners = [train.main([str(cfg), "--work-dir", str(tmp_path / w)]) for w in ("a", "b")]
    assert runners[0].experiment_name != runners[1].experiment_name
    for runner, w in zip(runners, ("a", "b")):
        assert Path(runner.logger.log_file).is_relative_to(tmp_path / w)
        assert list((tmp_path / w).glob("*/vis_data/scalars.json")), w


def test_optional_tensorboard_backend(tmp_path, monkeypatch):
    from visionattn.engine.vis_backends import OptionalTensorboardVisBackend

    monkeypatch.setattr(OptionalTensorboardVisBackend, "available", staticmethod(lambda: False))
    backend = OptionalTensorboardVisBackend(str(tmp_path))
    with pytest.warns(UserWarning, match="pip install tensorboard"):
        backend.add_scalar("loss", 1.0, step=1)
    backend.add_image("x", np.zeros((2, 2, 3), np.uint8))
    backend.close()
    assert not list(tmp_path.iterdir())  # nothing written


def _test_run(config: str, options: dict, tmp_path):
    """tools/test.py's path (load_config, --out, --show-dir, build_runner().test()) on random weights."""
    from visionattn.cli.test import apply_test_options
    from visionattn.engine import build_runner, load_config

    cfg = load_config(str(REPO / "configs" / config), work_dir=str(tmp_path / "work"), cfg_options=options)
    apply_test_options(cfg, config, out=tmp_path / "r.pkl", show_dir="show")
    metrics = build_runner(cfg).test()
    return metrics, load_predictions(tmp_path / "r.pkl"), sorted((tmp_path / "work" / "show").glob("*.png"))


def test_stereo_out_and_show_dir(samples_root, tmp_path):
    root = str(samples_root / "kitti2015")
    metrics, preds, pictures = _test_run("stereo/matchstereo_t_kitti15_ft.py", {
        "model.pretrained": False, "model.network_kwargs": dict(depths=(1, 1, 1, 1), num_layers=(1, 1, 1, 1)),
        "test_dataloader.dataset.root": root, "test_dataloader.num_workers": 0}, tmp_path)
    assert "stereo/all/epe" in metrics and preds and len(pictures) == len(preds)
    h, w = preds[0]["pred_disp"].shape
    with Image.open(pictures[0]) as im:
        assert im.size == (2 * w + 4, h)  # left image | disparity colour map


def test_restoration_out_and_show_dir(samples_root, tmp_path):
    root = str(samples_root / "restoration_medical" / "restore_rwkv")
    metrics, preds, pictures = _test_run("restoration/restore_rwkv_all_in_one.py", {
        "model.network.dim": 8, "model.network.num_blocks": (1, 1, 1, 1), "model.network.num_refinement_blocks": 1,
        "test_dataloader.dataset.root": root, "test_dataloader.num_workers": 0,
        "test_dataloader.persistent_workers": False}, tmp_path)
    assert "psnr" in metrics and preds and len(pictures) == len(preds)
    c, h, w = preds[0]["pred"].shape
    with Image.open(pictures[0]) as im:
        assert im.size == (3 * w + 8, h)  # input | restored | target


def test_lidar_picture_is_a_birds_eye_view(tmp_path):
    """LiDAR predictions go through visionattn.visualization.draw_bev: that frame's points, the ground
    truth and the predicted boxes scoring at least the threshold (RGB on disk)."""
    from visionattn.visualization import draw_bev

    boxes = torch.tensor([[5.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0], [-3.0, 4.0, 0.0, 1.0, 1.0, 1.0, 0.5]])
    points = torch.tensor([[0.0, -6.0, -6.0, 0.5], [1.0, 2.0, 5.0, 0.0]])  # frame 0: one point; frame 1: another
    gt = torch.tensor([[-5.0, 0.0, 0.0, 2.0, 2.0, 1.0, 0.0]])
    sample = dict(pred_instances_3d=dict(bboxes_3d=boxes, scores_3d=torch.tensor([0.9, 0.1]),
                                         labels_3d=torch.tensor([1, 0])), gt_boxes=gt, frame_id="seq_0007")
    hook = ShowPredictionsHook(str(tmp_path / "show"), score_thr=0.5)
    hook.after_test_iter(None, 0, dict(inputs=dict(points=points, batch_size=2)), [sample])
    pic = np.asarray(Image.open(tmp_path / "show" / "seq_0007.png").convert("RGB"))
    expected = draw_bev(points[:1, 1:].numpy(), boxes[:1].numpy(), np.array([1]), np.array([0.9]),
                        gt_boxes=gt.numpy())[..., ::-1]
    np.testing.assert_array_equal(pic, expected)  # the 0.1-score box and frame 1's point are left out