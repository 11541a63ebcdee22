"""tools/infer_lidar.py: KITTI label file (camera frame with --calib, axes-only without), LiDAR-frame list,
BEV picture; refuses to run without weights. The network runs for real (random weights, CPU, a small
point-cloud range); the box round trip replaces the detector's output with known boxes."""
import math

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip("spconv")

from visionattn.datasets.lidar_formats import (kitti_label_to_lidar_boxes, read_kitti_label,  # noqa: E402
                                               write_kitti_calib)

SMALL = dict(point_cloud_range=[0.0, -6.4, -3.0, 12.8, 6.4, 1.0])  # 64 x 64 voxels of the KITTI config
CALIB = dict(P2=np.array([[700.0, 0, 620, 45], [0, 700, 190, -0.3], [0, 0, 1, 0.005]]), R0_rect=np.eye(3),
             Tr_velo_to_cam=np.array([[0.01, -1, 0, -0.02], [0, 0.01, -1, -0.07], [1, 0, 0.01, -0.27]]))
BOXES = np.array([[8.0, 2.0, -0.9, 4.2, 1.7, 1.5, 0.3], [5.0, -4.0, -0.7, 0.8, 0.6, 1.8, -2.0]])


@pytest.fixture
def frame(tmp_path):
    rng = np.random.default_rng(0)
    ground = rng.uniform([0, -6, -1.8, 0], [12.5, 6, -1.6, 1], (700, 4))
    car = rng.uniform([6, 1.2, -1.6, 0], [10, 2.8, -0.2, 1], (100, 4))
    path = tmp_path / "000001.bin"
    np.concatenate([ground, car]).astype(np.float32).tofile(path)
    return path


@pytest.fixture
def small_model(monkeypatch):
    import visionattn

    create = visionattn.create_model
    monkeypatch.setattr(visionattn, "create_model", lambda name, **kw: create(name, **kw, **SMALL))


def test_refuses_without_weights(load_tool, frame, capsys):
    tool = load_tool("infer_lidar")
    assert tool.main([str(frame)]) == 2
    assert "--checkpoint" in capsys.readouterr().err
    assert tool.main([str(frame), "--random-weights", "--gt", "x.txt"]) == 2
    assert "--calib" in capsys.readouterr().err


def test_random_weights_run_writes_all_outputs(load_tool, frame, tmp_path, small_model, capsys):
    tool = load_tool("infer_lidar")
    out = tmp_path / "out"
    assert tool.main([str(frame), "--random-weights", "--score-thr", "0.2", "--out", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "800 points" in printed and "LiDAR frame with KITTI's camera axes" in printed
    label = read_kitti_label(out / "000001.txt")
    lidar = (out / "000001_lidar.txt").read_text().splitlines()
    assert len(label["name"]) == len(lidar) and set(label["name"]) <= {"Car", "Pedestrian", "Cyclist"}
    assert np.all(label["score"] >= 0.2) and np.all(label["bbox"] == -1)
    image = cv2.imread(str(out / "000001_bev.png"))
    assert image.shape == (128, 128, 3) and image.any()  # 12.8 m at 0.1 m/px


def test_boxes_round_trip_and_picture(load_tool, frame, tmp_path, small_model, monkeypatch):
    tool = load_tool("infer_lidar")
    known = dict(boxes=torch.tensor(BOXES, dtype=torch.float32), scores=torch.tensor([0.9, 0.1]),
                 labels=torch.tensor([0, 1]))
    monkeypatch.setattr(tool, "predict_boxes_3d", lambda model, points, batch_size: [known])
    calib = tmp_path / "calib.txt"
    write_kitti_calib(calib, CALIB)
    gt = tmp_path / "gt.txt"
    from visionattn.datasets.lidar_formats import write_kitti_label
    write_kitti_label(gt, ["Car", "DontCare"], BOXES + [0.8, 0, 0, 0, 0, 0, 0], CALIB)  # beside the prediction
    out = tmp_path / "cam"
    tool.main([str(frame), "--random-weights", "--score-thr", "0.0", "--calib", str(calib), "--gt", str(gt),
               "--out", str(out), "--device", "cpu"])
    label = read_kitti_label(out / "000001.txt")
    assert list(label["name"]) == ["Car", "Pedestrian"]
    back = kitti_label_to_lidar_boxes(label, {k: v for k, v in CALIB.items()})
    np.testing.assert_allclose(back[:, :6], BOXES[:, :6], atol=0.02)
    np.testing.assert_allclose(np.cos(back[:, 6] - BOXES[:, 6]), 1, atol=1e-3)
    assert np.all(label["bbox"][:, 2] > label["bbox"][:, 0])  # projected 2-D boxes
    lidar = np.array([line.split()[1:] for line in (out / "000001_lidar.txt").read_text().splitlines()], float)
    np.testing.assert_allclose(lidar[:, :7], BOXES, atol=1e-4)
    np.testing.assert_allclose(lidar[:, 7], [0.9, 0.1], atol=1e-4)
    # without --calib: the LiDAR boxes with KITTI's camera axes
    tool.main([str(frame), "--random-weights", "--score-thr", "0.5", "--out", str(tmp_path / "lid"), "--device", "cpu"])
    label = read_kitti_label(tmp_path / "lid" / "000001.txt")
    assert list(label["name"]) == ["Car"]
    x, y, z, dx, dy, dz, heading = BOXES[0]
    np.testing.assert_allclose(label["location"][0], [-y, -(z - dz / 2), x], atol=0.01)
    np.testing.assert_allclose(label["dimensions"][0], [dz, dy, dx], atol=0.01)
    assert math.cos(label["rotation_y"][0] - (-heading - math.pi / 2)) == pytest.approx(1, abs=1e-3)
    # the picture: the car in the class colour (orange, BGR (0, 140, 255)), its ground truth in white
    image = cv2.imread(str(out / "000001_bev.png")).astype(int)
    row, col = int((12.8 - 8.0) / 0.1), int((6.4 - 2.0) / 0.1)  # the car's centre
    patch = image[row - 30:row + 30, max(col - 30, 0):col + 30].reshape(-1, 3)
    orange = (np.abs(patch - (0, 140, 255)) <= 10).all(1)
    white = (patch >= 245).all(1)
    assert orange.sum() > 40 and white.sum() > 20


def test_npy_inputs(load_tool, tmp_path):
    tool = load_tool("infer_lidar")
    raw = np.array([[1, 2, 3, 0.5, 0.2, -1], [4, 5, 6, 2.0, 0.1, 0], [7, 8, 9, 1.0, 0.3, -1]], np.float32)
    np.save(tmp_path / "w.npy", raw)
    points, how = tool.read_points(str(tmp_path / "w.npy"), 5)
    assert "Waymo" in how
    np.testing.assert_allclose(points, np.concatenate([raw[[0, 2], :3], np.tanh(raw[[0, 2], 3:5])], 1), rtol=1e-6)
    np.save(tmp_path / "k.npy", raw[:, :4])
    assert tool.read_points(str(tmp_path / "k.npy"), 4)[0].shape == (3, 4)
    with pytest.raises(ValueError, match="scatterformer_waymo: 5"):
        tool.read_points(str(tmp_path / "k.npy"), 5)
    with pytest.raises(ValueError, match=".bin"):
        tool.read_points(str(_touch(tmp_path / "a.pcd")), 4)


def _touch(path):
    path.write_bytes(b"")
    return path


def test_empty_cloud_and_points_out_of_range(load_tool, tmp_path, small_model, capsys):
    """No point, or none inside the range: the network sees an empty BEV map; outputs are still written."""
    tool = load_tool("infer_lidar")
    empty, far = tmp_path / "empty.bin", tmp_path / "far.bin"
    np.zeros((0, 4), np.float32).tofile(empty)
    np.array([[500.0, 0, 0, 0.5], [-3, 0, 0, 0.5]], np.float32).tofile(far)
    for path in (empty, far):
        out = tmp_path / path.stem
        assert tool.main([str(path), "--random-weights", "--out", str(out), "--device", "cpu"]) == 0
        assert (out / f"{path.stem}.txt").is_file() and cv2.imread(str(out / f"{path.stem}_bev.png")) is not None
    assert "0 points" in capsys.readouterr().out


def test_config_builds_the_trained_network(load_tool, frame, tmp_path, capsys):
    """--config: a checkpoint written by tools/train.py for a config with its own point-cloud range loads
    into the network that config describes (a 64 x 64 range), and the picture covers that range."""
    import visionattn

    config = tmp_path / "small.py"
    config.write_text(f"model = dict(type='ScatterFormerDetector', network=dict(name='scatterformer_kitti', "
                      f"point_cloud_range={SMALL['point_cloud_range']!r}))\n")
    torch.manual_seed(0)
    net = visionattn.create_model("scatterformer_kitti", **SMALL)
    checkpoint = tmp_path / "epoch_1.pth"
    torch.save(dict(meta={}, state_dict={f"network.{k}": v for k, v in net.state_dict().items()}), checkpoint)
    tool = load_tool("infer_lidar")
    out = tmp_path / "out"
    assert tool.main([str(frame), "--config", str(config), "--checkpoint", str(checkpoint), "--out", str(out),
                      "--device", "cpu"]) == 0
    assert cv2.imread(str(out / "000001_bev.png")).shape == (128, 128, 3)  # the config's 12.8 m, not KITTI's 70.4
    # a config whose model.network names no model is refused with the form it needs
    bad = tmp_path / "bad.py"
    bad.write_text("model = dict(type='ScatterFormerDetector', network=dict(point_cloud_range=[0, 0, 0, 1, 1, 1]))\n")
    assert tool.main([str(frame), "--config", str(bad), "--checkpoint", str(checkpoint), "--device", "cpu"]) == 2
    assert "model.network must be" in capsys.readouterr().err
