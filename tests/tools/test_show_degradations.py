"""tools/show_degradations.py draws one row per degradation step plus the whole pipeline."""
import cv2
import numpy as np
import pytest


def test_gallery_png(load_tool, samples_root, tmp_path):
    tool = load_tool("show_degradations")
    face = tmp_path / "face.png"
    cv2.imwrite(str(face), cv2.resize(cv2.imread(str(samples_root / "faces" / "ffhq" / "00000.png")), (96, 96)))
    out = tool.main(["--image", str(face), "--seeds", "2", "--out", str(tmp_path / "gallery.png")])
    img = cv2.imread(str(out))
    assert img is not None and img.shape[0] > img.shape[1] > 100  # 8 rows x 2 columns
    assert np.unique(img.reshape(-1, 3), axis=0).shape[0] > 1000  # pictures, not an empty figure
    steps = tool._steps([dict(type="UnevenMix", prob=0.1, degradation=[
        dict(type="Haze", prob=0.01), dict(type="RandomDownsample", inner=[dict(type="GaussianNoise")])])])
    assert [label for label, _ in steps] == ["haze (p=1)", "downsample x(0.8, 8.0)", "GaussianNoise", "uneven mix (p=1)"]
    with pytest.raises(SystemExit):
        tool.main(["--seeds", "0"])
