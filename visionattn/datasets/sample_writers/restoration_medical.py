"""Tiny medical restoration samples in the real formats (``datasets/samples/restoration_medical``):

- ``restore_rwkv/{MRI,CT,PET}/train/{LQ,HQ}/*.bin`` (pickled 2-D float arrays, the official training
  format) and ``.../{validation,test}/{LQ,HQ}/*.nii`` (NIfTI volumes); LQ by k-space truncation x4,
  low-dose CT noise, PET count subsampling (DRF 12).
- ``aapm/L000/{full_1mm,quarter_1mm}/*.IMA``: a DICOM CT pair (int16 + RescaleIntercept -1024).
- ``png/{LQ,HQ}/*.png``: 16-bit PNG slice pairs.
"""
import pickle
from pathlib import Path

import numpy as np

from ..degradations import KSpaceTruncation, LowDoseCTNoise, PETCountSubsampling
from ..medical_io import write_nifti
from ...extras import require_extra
from . import register_sample_writer


def phantom(size: int, rng: np.random.Generator) -> np.ndarray:
    """Ellipses on a disc: a smooth head-like image in [0, 1]."""
    yy, xx = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
    img = 0.6 * ((xx / 0.9) ** 2 + (yy / 0.8) ** 2 < 1)
    for _ in range(4):
        cx, cy, a, b = rng.uniform(-0.4, 0.4, 2).tolist() + rng.uniform(0.1, 0.3, 2).tolist()
        img += rng.uniform(0.1, 0.3) * (((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2 < 1)
    return np.clip(img, 0, 1)


def _write_dicom(path: Path, hu: np.ndarray, z: float, uid_suffix: int) -> None:
    pydicom = require_extra("pydicom")
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.3680043.8.498.{uid_suffix}"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "CT", "L000"
    ds.Rows, ds.Columns = hu.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.ImagePositionPatient = [0.0, 0.0, z]
    ds.InstanceNumber = int(z)
    ds.PixelSpacing = [0.7, 0.7]
    ds.PixelData = np.round(hu + 1024).astype(np.int16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)


@register_sample_writer("restoration_medical")
def write(root: Path) -> None:
    rng = np.random.default_rng(0)
    size = 32
    # the official tree for the three modalities: train .bin slices, validation/test .nii volumes
    makers = dict(MRI=(lambda im: im * 3000, KSpaceTruncation(4)),
                  CT=(lambda im: im * 1200 - 1000, LowDoseCTNoise(0.25)),
                  PET=(lambda im: im * 8, PETCountSubsampling(12)))
    for mod, (to_units, degrade) in makers.items():
        for split, n in (("train", 2), ("validation", 1), ("test", 1)):
            for q in ("LQ", "HQ"):
                (root / "restore_rwkv" / mod / split / q).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                if split == "train":
                    hq = to_units(phantom(size, rng))
                    for q, img in (("HQ", hq), ("LQ", degrade(hq, rng))):
                        with open(root / "restore_rwkv" / mod / split / q / f"{mod}{i:03d}_050.bin", "wb") as f:
                            pickle.dump(img.astype(np.float32), f)
                else:
                    vol = np.stack([to_units(phantom(size, rng)) for _ in range(2)], axis=-1)
                    lq = np.stack([degrade(vol[..., z], rng) for z in range(vol.shape[-1])], axis=-1)
                    write_nifti(root / "restore_rwkv" / mod / split / "HQ" / f"{mod}100.nii", vol)
                    write_nifti(root / "restore_rwkv" / mod / split / "LQ" / f"{mod}100.nii", lq)
    # AAPM-style DICOM pair: HU image, quarter dose = full + noise
    noise = LowDoseCTNoise(0.25)
    for z in range(2):
        hu = phantom(size, rng) * 1200 - 1000
        for folder, img in (("full_1mm", hu), ("quarter_1mm", noise(hu, rng))):
            out = root / "aapm" / "L000" / folder
            out.mkdir(parents=True, exist_ok=True)
            _write_dicom(out / f"L000_{folder}_{z:04d}.IMA", np.clip(img, -1024, 3071), float(z + 1), 100 * z + len(folder))
    import cv2

    for i in range(2):
        hq = phantom(size, rng)
        lq = np.clip(hq + rng.normal(0, 0.05, hq.shape), 0, 1)
        for q, img in (("HQ", hq), ("LQ", lq)):
            (root / "png" / q).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / "png" / q / f"slice_{i:03d}.png"), np.round(img * 65535).astype(np.uint16))
