"""visionattn-infer-restore (tools/infer_restore.py) on the NIfTI and PNG samples (light model, random weights)."""
import cv2
import numpy as np

from visionattn.datasets import medical_io as mio


def _tool():
    from visionattn.cli import infer_restore

    return infer_restore


def test_nifti_and_png(samples_root, tmp_path):
    tool = _tool()
    root = samples_root / "restoration_medical"
    src = root / "restore_rwkv/MRI/test/LQ/MRI100.nii"
    assert tool.main([str(src), "--model", "restore_rwkv_light", "--modality", "MRI", "--out", str(tmp_path), "--tile", "24",
               "--overlap", "8", "--device", "cpu", "--random-weights"]) is None
    vol, affine, _ = mio.read_nifti(src)
    out, out_affine, _ = mio.read_nifti(tmp_path / "MRI100_restored.nii")
    assert out.shape == vol.shape and np.allclose(out_affine, affine) and 0 <= out.min() and out.max() <= 4095
    pic = cv2.imread(str(tmp_path / "MRI100_compare.png"), cv2.IMREAD_UNCHANGED)
    assert pic.shape == (32, 96)
    assert tool.main([str(root / "png/LQ/slice_000.png"), "--model", "restore_rwkv_light", "--modality", "0,65535",
               "--out", str(tmp_path), "--device", "cpu", "--random-weights"]) is None
    assert cv2.imread(str(tmp_path / "slice_000_restored.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16
