"""tools/infer_stereo.py writes the disparity as PFM, KITTI PNG, colour PNG and the consistency mask."""
import numpy as np
import pytest

from visionattn.datasets.stereo import read_kitti_disparity, read_pfm, write_kitti_disparity
from visionattn.models.stereo import matchstereo as ms


def test_infer_stereo_writes_outputs(load_tool, tmp_path, samples_root, monkeypatch, capsys):
    tool = load_tool("infer_stereo")
    # a narrow model keeps the test fast; the CLI path is the same for every registered stereo model
    monkeypatch.setattr(tool.visionattn, "create_model",
                        lambda name, **kw: ms.MatchStereo((8, 16, 16, 24), depths=(1, 1, 1, 1), num_layers=(1, 1, 1, 1),
                                                          num_heads=(2, 2, 2, 2)))
    scene = samples_root / "middlebury" / "trainingQ" / "Adirondack"
    assert tool.main([str(scene / "im0.png"), str(scene / "im1.png"), "--out", str(tmp_path), "--device", "cpu",
                      "--random-weights"]) == 0
    pfm = read_pfm(tmp_path / "im0_disp.pfm")
    png, _ = read_kitti_disparity(tmp_path / "im0_disp.png")
    assert pfm.shape == (200, 240) and (pfm >= 0).all()
    np.testing.assert_allclose(png, np.round(pfm * 256) / 256, atol=1 / 256)
    import cv2
    assert cv2.imread(str(tmp_path / "im0_disp_color.png")).shape == (200, 240, 3)
    assert set(np.unique(cv2.imread(str(tmp_path / "im0_consistency.png"), 0))) <= {128, 255}
    assert "consistent" in capsys.readouterr().out
    assert tool.main([str(tmp_path / "missing.png"), str(scene / "im1.png")]) == 2
    assert "missing.png" in capsys.readouterr().err
    # no weights: refused unless --random-weights
    assert tool.main([str(scene / "im0.png"), str(scene / "im1.png"), "--out", str(tmp_path)]) == 2
    assert "--random-weights" in capsys.readouterr().err
    # --gt: Middlebury PFM (inf = invalid) scored and shown next to the prediction on one scale
    args = [str(scene / "im0.png"), str(scene / "im1.png"), "--out", str(tmp_path), "--device", "cpu", "--random-weights"]
    assert tool.main(args + ["--gt", str(scene / "disp0GT.pfm")]) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    gt = read_pfm(scene / "disp0GT.pfm")
    valid = np.isfinite(gt)
    epe = np.abs(read_pfm(tmp_path / "im0_disp.pfm") - gt)[valid].mean()
    assert f"EPE {epe:.2f} px" in line and f"over {valid.sum()} valid pixels" in line
    assert cv2.imread(str(tmp_path / "im0_compare.png")).shape == (200, 3 * 240, 3)
    write_kitti_disparity(tmp_path / "wrong_size.png", gt[:100])
    assert tool.main(args + ["--gt", str(tmp_path / "wrong_size.png")]) == 2
    assert "differs" in capsys.readouterr().err
