"""Readers of medical and plain image formats, returning float64 numpy arrays in physical units.

- NIfTI volumes (``.nii``/``.nii.gz``, nibabel): :func:`read_nifti` -> (volume, affine, header),
  :func:`nifti_slices` splits along a chosen axis.
- DICOM series (pydicom): :func:`read_dicom_series` sorts a folder's slices by position and applies
  RescaleSlope/Intercept (CT -> HU). The AAPM low-dose CT release stores one series per dose
  (e.g. ``L067/full_1mm/*.IMA`` and ``L067/quarter_1mm/*.IMA``).
- 2-D slices: ``.npy``, ``.png``, ``.tif``/``.tiff`` and the official Restore-RWKV ``.bin``
  (a pickled 2-D numpy array): :func:`read_slice`.
"""
import pickle
from pathlib import Path
from typing import List, Tuple, Union

import numpy as np

from ..extras import require_extra

PathLike = Union[str, Path]
SLICE_SUFFIXES = (".npy", ".png", ".tif", ".tiff", ".bin")


def _exists(path: PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{str(path)!r} does not exist")
    return path


def is_nifti(path: PathLike) -> bool:
    return str(path).endswith((".nii", ".nii.gz"))


def read_nifti(path: PathLike) -> Tuple[np.ndarray, np.ndarray, object]:
    """(volume (X, Y, Z) float64 with scl_slope/inter applied, 4x4 affine, header)."""
    nib = require_extra("nibabel")
    img = nib.load(str(_exists(path)))
    return np.asarray(img.get_fdata(dtype=np.float64)), img.affine, img.header


def nifti_slices(path: PathLike, axis: int = 2) -> List[np.ndarray]:
    """2-D slices of a NIfTI volume along ``axis`` (0, 1 or 2)."""
    vol = read_nifti(path)[0]
    if vol.ndim == 2:
        return [vol]
    if axis not in (0, 1, 2):
        raise ValueError(f"slice axis must be 0, 1 or 2; got {axis}")
    return [np.take(vol, i, axis=axis) for i in range(vol.shape[axis])]


def write_nifti(path: PathLike, volume: np.ndarray, affine=None, header=None) -> None:
    """Write a volume; pass the input's affine/header to keep its geometry."""
    nib = require_extra("nibabel")
    img = nib.Nifti1Image(np.asarray(volume, dtype=np.float32), np.eye(4) if affine is None else affine, header)
    if header is not None:
        img.header.set_data_dtype(np.float32)
        img.header["scl_slope"], img.header["scl_inter"] = 1.0, 0.0
    nib.save(img, str(path))


def read_dicom_series(folder: PathLike) -> np.ndarray:
    """(Z, H, W) float64 volume of the DICOM files in ``folder``, in physical units (HU for CT)."""
    pydicom = require_extra("pydicom")
    folder = _exists(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    slices = []
    for p in files:
        try:
            ds = pydicom.dcmread(str(p))
        except pydicom.errors.InvalidDicomError:
            continue
        if "PixelData" in ds:
            slices.append(ds)
    if not slices:
        raise FileNotFoundError(f"no DICOM images in {str(folder)!r}")

    def position(ds):
        ipp = getattr(ds, "ImagePositionPatient", None)
        return float(ipp[2]) if ipp is not None else float(getattr(ds, "InstanceNumber", 0))

    slices.sort(key=position)
    return np.stack([ds.pixel_array.astype(np.float64) * float(getattr(ds, "RescaleSlope", 1.0))
                     + float(getattr(ds, "RescaleIntercept", 0.0)) for ds in slices])


def read_slice(path: PathLike) -> np.ndarray:
    """A 2-D float64 slice from .npy/.png/.tif/.tiff/.bin (official pickled slices)."""
    path = _exists(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        arr = np.load(path)
    elif suffix == ".bin":
        with open(path, "rb") as f:  # the official format: pickle of a numpy array (trusted data only)
            arr = pickle.load(f)
    elif suffix in (".tif", ".tiff"):
        arr = require_extra("tifffile").imread(path)
    elif suffix == ".png":
        import cv2

        arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if arr is None:
            raise RuntimeError(f"could not decode PNG {str(path)!r}")
        if arr.ndim == 3:
            arr = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB if arr.shape[2] == 3 else cv2.COLOR_BGRA2RGBA)
    else:
        raise ValueError(f"unsupported slice format {suffix!r} for {str(path)!r}; use one of {SLICE_SUFFIXES}")
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim not in (2, 3):
        raise ValueError(f"{str(path)!r} holds a {arr.ndim}-D array; expected a 2-D slice (H, W) or (H, W, C)")
    return arr
