"""Optional dependencies: one place that imports them and says which extra to install."""
import importlib

# module name -> (extra that provides it, what it is for)
_EXTRAS = {
    "mmdet": ("det", "detection and segmentation with mmdet"),
    "mmcv": ("det", "mmcv's compiled ops used by mmdet"),
    "mmseg": ("det", "semantic segmentation with mmsegmentation"),
    "spconv": ("3d", "sparse voxel convolutions for LiDAR 3D detection"),
    "cumm": ("3d", "spconv's runtime"),
    "spconv_triton": ("3d", "sparse voxel convolutions on GPUs (Triton)"),
    "nibabel": ("medical", "reading and writing NIfTI volumes"),
    "pydicom": ("medical", "reading DICOM series"),
    "tifffile": ("medical", "reading and writing TIFF slices"),
    "lpips": ("face", "the LPIPS perceptual loss and metric"),
    "pytorch_fid": ("face", "the FID metric (pytorch-fid's Inception network)"),
    "lmdb": ("face", "reading and writing BasicSR LMDB image databases"),
    "facexlib": ("face-detect", "detecting and aligning faces in photos (RetinaFace)"),
    "onnx": ("dev", "writing ONNX files (tools/export.py --format onnx)"),
    "onnxscript": ("dev", "translating ops to ONNX (tools/export.py --format onnx)"),
    "onnxruntime": ("dev", "running an exported ONNX file to check it against PyTorch"),
}


def require_extra(module: str):
    """Import and return ``module``, or raise an ImportError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        top = module.split(".")[0]
        extra, purpose = _EXTRAS.get(top, (None, None))
        if extra is None:
            raise
        raise ImportError(
            f"'{module}' is needed for {purpose} but could not be imported ({err}). "
            f"Install the extra: pip install 'visionattn[{extra}]' (in a clone: pip install -e '.[{extra}]', "
            f"or `make install` for everything)."
        ) from err
