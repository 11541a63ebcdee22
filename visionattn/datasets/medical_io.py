"""Readers of medical and plain image formats, returning float64 numpy arrays in physical units.

- NIfTI volumes (``.nii``/``.nii.gz``, nibabel): :func:`read_nifti` -> (volume, affine, header),
  :func:`nifti_slices` splits along a chosen axis.
- DICOM series (pydicom): :func:`read_dicom_series` sorts a folder's slices by position and applies
  RescaleSlope/Intercept (CT -> HU). The AAPM low-dose CT release stores one series per dose
  (e.g. ``L067/full_1mm/*.IMA`` and ``L067/quarter_1mm/*.IMA``).
- 2-D slices: ``.npy``, ``.png``, ``.tif``/``.tiff`` and the official Restore-RWKV ``.bin``
  (a pickled 2-D numpy array, read with an unpickler that builds numpy arrays and nothing else, so a
  data file never runs code): :func:`read_slice`.

A damaged file is a :class:`~visionattn.datasets.corrupt.CorruptSampleError` naming it.
"""
import pickle
import struct
import zlib
from pathlib import Path
from typing import List, Tuple, Union

import numpy as np

from ..extras import require_extra
from ..safe_pickle import load_arrays_only
from .corrupt import CorruptSampleError

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
    """(volume (X, Y, Z) float64 with scl_slope/inter applied, 4x4 affine, header). A damaged or
    truncated file is a :class:`CorruptSampleError` naming it."""
    nib = require_extra("nibabel")
    path = _exists(path)
    try:
        img = nib.load(str(path))
        volume = np.asarray(img.get_fdata(dtype=np.float64))
    except (OSError, EOFError, ValueError, TypeError, IndexError, KeyError, nib.filebasedimages.ImageFileError,
            zlib.error, MemoryError) as err:
        kind = "truncated" if isinstance(err, EOFError) or "bytes" in str(err) or "EOF" in str(err) else "damaged"
        raise CorruptSampleError(path, f"not a readable NIfTI volume ({kind}: {type(err).__name__}: {err})") from None
    return volume, img.affine, img.header


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
            if p.suffix.lower() in (".dcm", ".ima"):  # named as a slice, yet not DICOM: damaged
                raise CorruptSampleError(p, "is not a readable DICOM file (no DICM preamble: damaged or another "
                                            "format)") from None
            continue  # other files of the folder (DICOMDIR, notes) are not slices
        except (OSError, EOFError, ValueError, KeyError, IndexError, TypeError, struct.error) as err:
            raise CorruptSampleError(p, f"damaged DICOM file ({type(err).__name__}: {err})") from None
        if "PixelData" in ds:
            slices.append(ds)
    if not slices:
        raise FileNotFoundError(f"no DICOM images in {str(folder)!r}")

    def position(ds):
        ipp = getattr(ds, "ImagePositionPatient", None)
        return float(ipp[2]) if ipp is not None else float(getattr(ds, "InstanceNumber", 0))

    slices.sort(key=position)

    def pixels(ds):
        try:
            return ds.pixel_array.astype(np.float64)
        except Exception as err:  # pydicom/numpy fail in many ways on damaged pixel data
            raise CorruptSampleError(ds.filename, f"DICOM pixel data cannot be decoded ({type(err).__name__}: "
                                                  f"{err})") from None

    images = [pixels(ds) for ds in slices]
    shapes = {img.shape for img in images}
    if len(shapes) > 1:
        raise CorruptSampleError(folder, f"the DICOM slices have different sizes {sorted(shapes)}")
    return np.stack([img * float(getattr(ds, "RescaleSlope", 1.0)) + float(getattr(ds, "RescaleIntercept", 0.0))
                     for img, ds in zip(images, slices)])


def read_slice(path: PathLike) -> np.ndarray:
    """A 2-D float64 slice from .npy/.png/.tif/.tiff/.bin (official pickled slices)."""
    path = _exists(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as err:  # numpy's header parser fails with many types (ValueError, TokenError...)
            raise CorruptSampleError(path, f"not a readable .npy array ({type(err).__name__}: {err})") from None
    elif suffix == ".bin":
        with open(path, "rb") as f:  # the official format: a pickled numpy array; nothing else is built
            try:
                arr = load_arrays_only(f, what=f"slice {str(path)!r}")
            except pickle.UnpicklingError as err:
                raise CorruptSampleError(path, str(err).replace(f"slice {str(path)!r} ", "")) from None
        if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
            raise CorruptSampleError(path, f"holds a {type(arr).__name__}"
                                           f"{' of ' + str(arr.dtype) if isinstance(arr, np.ndarray) else ''}, "
                                           f"not a numeric numpy array (a Restore-RWKV .bin slice)")
    elif suffix in (".tif", ".tiff"):
        tifffile = require_extra("tifffile")
        try:
            arr = tifffile.imread(path)
        except (OSError, ValueError, TypeError, IndexError, KeyError, tifffile.TiffFileError) as err:
            raise CorruptSampleError(path, f"not a readable TIFF ({type(err).__name__}: {err})") from None
    elif suffix == ".png":
        import cv2

        arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if arr is None:
            raise CorruptSampleError(path, "not a PNG OpenCV can decode (damaged or truncated)")
        if arr.ndim == 3:
            arr = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB if arr.shape[2] == 3 else cv2.COLOR_BGRA2RGBA)
    else:
        raise ValueError(f"unsupported slice format {suffix!r} for {str(path)!r}; use one of {SLICE_SUFFIXES}")
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim in (2, 3) and min(arr.shape[:2]) == 0:
        raise CorruptSampleError(path, f"holds an empty array of shape {arr.shape}")
    if arr.ndim not in (2, 3):
        raise ValueError(f"{str(path)!r} holds a {arr.ndim}-D array; expected a 2-D slice (H, W) or (H, W, C)")
    return arr
