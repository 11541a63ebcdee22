"""Stereo datasets in their released on-disk formats, PFM/KITTI-PNG I/O and stereo augmentation.

Layouts (``root`` is the dataset folder):
* SceneFlow: ``<subset>/frames_cleanpass/**/left/*.png|webp`` (+ ``right``), disparity
  ``<subset>/disparity/**/{left,right}/*.pfm`` (FlyingThings3D splits under ``TRAIN``/``TEST``).
* KITTI 2015: ``training/image_2|image_3/*_10.png``, ``disp_occ_0`` / ``disp_noc_0`` uint16 PNG.
  KITTI 2012: ``training/colored_0|colored_1``, ``disp_occ`` / ``disp_noc``. Disparity = value/256,
  0 = no ground truth.
* Middlebury v3 / ETH3D two-view: ``<split>/<scene>/im0.png, im1.png, disp0GT.pfm`` (inf = no
  ground truth) and ``mask0nocc.png`` (255 = non-occluded).

Each item: ``dict(inputs=uint8 (2, 3, H, W) [left, right], data_samples=dict(disp (1, H, W) float32,
valid (1, H, W) bool, [valid_noc], [disp_right, valid_right]))``.
"""
import re
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ..registry import DATASETS, TRANSFORMS
from .corrupt import CorruptSampleError, read_rgb


# --- file formats ----------------------------------------------------------------------------

MAX_PFM_SIDE = 1 << 16  # larger sides are a damaged header, not an image


def read_pfm(path: Union[str, Path]) -> np.ndarray:
    """PFM -> float32 (H, W) or (H, W, 3), top row first (PFM stores rows bottom-up).

    The header is checked: ``PF`` (3 channels) or ``Pf`` (1), a ``width height`` line of two
    positive integers, and a scale line holding a non-zero finite number whose sign gives the byte
    order (negative: little-endian). A damaged header or fewer values than it announces is a
    :class:`CorruptSampleError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PFM file {str(path)!r} does not exist")
    with open(path, "rb") as f:
        header = f.readline().strip()
        if header not in (b"PF", b"Pf"):
            raise CorruptSampleError(path, f"not a PFM file: the first line is {header[:20]!r}, not PF or Pf")
        dims = f.readline()
        while dims.startswith(b"#"):
            dims = f.readline()
        match = re.match(rb"^\s*(\d+)\s+(\d+)\s*$", dims)
        if not match:
            raise CorruptSampleError(path, f"malformed PFM size line {dims[:40]!r}: expected 'width height'")
        w, h = int(match.group(1)), int(match.group(2))
        if not (0 < w <= MAX_PFM_SIDE and 0 < h <= MAX_PFM_SIDE):
            raise CorruptSampleError(path, f"PFM size {w}x{h} is out of range (each side 1..{MAX_PFM_SIDE})")
        scale_line = f.readline().strip()
        try:
            scale = float(scale_line)
        except ValueError:
            raise CorruptSampleError(path, f"PFM scale line {scale_line[:40]!r} is not a number") from None
        if scale == 0 or not np.isfinite(scale):
            raise CorruptSampleError(path, f"PFM scale {scale_line.decode(errors='replace')!r} is invalid: it must be "
                                           f"a non-zero finite number (its sign gives the byte order)")
        dtype = "<f4" if scale < 0 else ">f4"
        channels = 3 if header == b"PF" else 1
        data = np.frombuffer(f.read(w * h * channels * 4), dtype=np.uint8)
    if data.size != w * h * channels * 4:
        raise CorruptSampleError(path, f"truncated PFM: {data.size // 4} of the {w * h * channels} values its "
                                       f"{w}x{h}x{channels} header announces")
    shape = (h, w, 3) if channels == 3 else (h, w)
    return np.flipud(data.view(dtype).reshape(shape)).astype(np.float32)


def write_pfm(path: Union[str, Path], array: np.ndarray) -> None:
    """float (H, W) or (H, W, 3) -> little-endian PFM (rows bottom-up, scale -1)."""
    array = np.asarray(array, dtype=np.float32)
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise ValueError(f"PFM holds (H, W) or (H, W, 3) arrays, got shape {array.shape}")
    header = b"PF" if array.ndim == 3 else b"Pf"
    with open(path, "wb") as f:
        f.write(header + b"\n" + f"{array.shape[1]} {array.shape[0]}\n".encode() + b"-1\n")
        f.write(np.flipud(array).astype("<f4").tobytes())


def read_kitti_disparity(path: Union[str, Path]) -> Tuple[np.ndarray, np.ndarray]:
    """KITTI uint16 PNG -> (disparity float32 (H, W) = value / 256, valid bool (H, W) = value > 0).
    Anything but a single-channel 16-bit PNG (an 8-bit or a 3-channel map) is an error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"KITTI disparity {str(path)!r} does not exist")
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise CorruptSampleError(path, "not a PNG OpenCV can decode (damaged or another format)")
    if raw.dtype != np.uint16:
        raise CorruptSampleError(path, f"KITTI disparity must be a 16-bit PNG (value = 256 x disparity), got {raw.dtype}")
    if raw.ndim != 2:
        raise CorruptSampleError(path, f"KITTI disparity must be a single-channel 16-bit PNG, got {raw.shape[2]} "
                                       f"channels")
    return raw.astype(np.float32) / 256.0, raw > 0


def write_kitti_disparity(path: Union[str, Path], disp: np.ndarray) -> None:
    """Disparity (H, W) px -> KITTI uint16 PNG (value = round(256 d), 0 = invalid/negative)."""
    value = np.clip(np.round(np.nan_to_num(disp, nan=0.0, posinf=0.0) * 256.0), 0, 65535).astype(np.uint16)
    cv2.imwrite(str(path), value)


def read_image(path: Union[str, Path]) -> np.ndarray:
    """An image -> (H, W, 3) uint8 RGB; a damaged file is a :class:`CorruptSampleError` naming it."""
    return read_rgb(path)


def read_mask(path: Union[str, Path]) -> np.ndarray:
    """A single-channel 8-bit mask PNG -> (H, W) uint8."""
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise CorruptSampleError(path, "not a PNG OpenCV can decode (damaged or another format)")
    if raw.ndim != 2:
        raise CorruptSampleError(path, f"a mask must have one channel, got {raw.shape[2]}")
    return raw


def check_sample(sample: Dict, paths: Dict) -> Dict:
    """The images of a stereo sample are one size, and every disparity/validity map is (H, W) at it."""
    h, w = sample["left"].shape[:2]
    if sample["right"].shape != sample["left"].shape:
        rh, rw = sample["right"].shape[:2]
        raise CorruptSampleError(paths["right"], f"right image is {rw}x{rh} but the left {str(paths['left'])!r} is "
                                                 f"{w}x{h}")
    for key, value in sample.items():
        if key in ("left", "right"):
            continue
        source = paths.get(key, paths.get(key.replace("valid", "disp"), paths.get("noc", paths["left"])))
        if value.ndim != 2:
            raise CorruptSampleError(source, f"{key} map has shape {value.shape}; a disparity map has one channel")
        if value.shape != (h, w):
            raise CorruptSampleError(source, f"{key} map is {value.shape[1]}x{value.shape[0]} but the images "
                                             f"({str(paths['left'])!r}) are {w}x{h}")
    return sample


# --- augmentation ----------------------------------------------------------------------------

@TRANSFORMS.register_module()
class StereoAugment:
    """Training augmentation of a stereo pair with its disparities (numpy, HWC uint8 images).

    Random scale (images bilinear, disparities nearest and multiplied by the x scale; validity
    nearest), random crop to ``crop_size``, colour jitter applied to the pair jointly or, with
    probability ``asymmetric_prob``, separately per view, and an occlusion patch: a random
    rectangle of the right image filled with its mean colour (probability ``occlusion_prob``).
    """

    def __init__(self, crop_size: Sequence[int] = (320, 736), scale_range: Sequence[float] = (0.8, 1.2),
                 color_jitter: float = 0.3, asymmetric_prob: float = 0.2, occlusion_prob: float = 0.5,
                 seed: Optional[int] = None):
        import albumentations as A

        self.crop_size = tuple(int(s) for s in crop_size)
        self.scale_range = scale_range
        self.jitter = A.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter,
                                    hue=color_jitter / 2, p=1.0) if color_jitter else None
        self.asymmetric_prob, self.occlusion_prob = asymmetric_prob, occlusion_prob
        self.rng = np.random.default_rng(seed)

    def __call__(self, sample: Dict) -> Dict:
        ch, cw = self.crop_size
        h, w = sample["left"].shape[:2]
        lo = max(self.scale_range[0], ch / h, cw / w)  # never smaller than the crop
        s = float(self.rng.uniform(lo, max(lo, self.scale_range[1])))
        if abs(s - 1.0) > 1e-6:
            size = (int(np.ceil(w * s)), int(np.ceil(h * s)))
            for key in ("left", "right"):
                sample[key] = cv2.resize(sample[key], size, interpolation=cv2.INTER_LINEAR)
            for key in [k for k in sample if k.startswith(("disp", "valid"))]:
                resized = cv2.resize(sample[key].astype(np.float32), size, interpolation=cv2.INTER_NEAREST)
                sample[key] = resized * s if key.startswith("disp") else resized > 0.5
            h, w = sample["left"].shape[:2]
        y = int(self.rng.integers(0, h - ch + 1))
        x = int(self.rng.integers(0, w - cw + 1))
        for key in list(sample):
            if isinstance(sample[key], np.ndarray):
                sample[key] = np.ascontiguousarray(sample[key][y:y + ch, x:x + cw])
        if self.jitter is not None:
            if self.rng.random() < self.asymmetric_prob:
                sample["left"] = self.jitter(image=sample["left"])["image"]
                sample["right"] = self.jitter(image=sample["right"])["image"]
            else:
                both = self.jitter(image=np.concatenate((sample["left"], sample["right"]), 1))["image"]
                sample["left"], sample["right"] = both[:, :cw], both[:, cw:]
        if self.rng.random() < self.occlusion_prob:
            ph, pw = int(self.rng.integers(ch // 16, ch // 4 + 1)), int(self.rng.integers(cw // 16, cw // 4 + 1))
            py, px = int(self.rng.integers(0, ch - ph + 1)), int(self.rng.integers(0, cw - pw + 1))
            right = sample["right"].copy()
            right[py:py + ph, px:px + pw] = right.reshape(-1, 3).mean(0).astype(np.uint8)
            sample["right"] = right
        return sample


# --- datasets --------------------------------------------------------------------------------

class StereoDataset(Dataset):
    """Base: ``self.samples`` is a list of dicts of paths; ``_load`` reads one into numpy arrays."""

    name = "stereo"

    def __init__(self, root: str, transform: Union[Callable, Dict, None] = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.name} root {str(self.root)!r} does not exist (see datasets/README.md; "
                                    f"python tools/make_samples.py writes a tiny copy under datasets/samples/)")
        self.transform = TRANSFORMS.build(transform) if isinstance(transform, dict) else transform
        self.samples = self.find_samples()
        if not self.samples:
            raise FileNotFoundError(f"no {self.name} samples under {str(self.root)!r}; expected the layout in "
                                    f"{type(self).__module__}")

    def find_samples(self) -> List[Dict]:
        raise NotImplementedError

    def _load(self, paths: Dict) -> Dict:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Dict:
        paths = self.samples[index]
        sample = check_sample(self._load(paths), paths)
        if self.transform is not None:
            sample = self.transform(sample)
        inputs = torch.from_numpy(np.stack((sample.pop("left"), sample.pop("right")))).permute(0, 3, 1, 2)
        data = {k: torch.from_numpy(np.ascontiguousarray(v))[None] for k, v in sample.items()}
        return dict(inputs=inputs.contiguous(), data_samples=data)


@DATASETS.register_module()
class SceneFlowDataset(StereoDataset):
    """SceneFlow (FlyingThings3D, Driving, Monkaa): images + PFM disparities of both views."""

    name = "SceneFlow"

    def __init__(self, root: str, subsets: Sequence[str] = ("FlyingThings3D", "Driving", "Monkaa"),
                 split: Optional[str] = "TRAIN", image_pass: str = "frames_cleanpass", transform=None):
        self.subsets, self.split, self.image_pass = tuple(subsets), split, image_pass
        super().__init__(root, transform)

    def find_samples(self):
        samples = []
        for subset in self.subsets:
            base = self.root / subset / self.image_pass
            for left in sorted(p for p in base.glob("**/left/*") if p.suffix.lower() in (".png", ".webp")):
                rel = left.relative_to(base)
                if subset == "FlyingThings3D" and self.split and rel.parts[0] != self.split:
                    continue
                disp = (self.root / subset / "disparity" / rel).with_suffix(".pfm")
                right = base / Path(*[("right" if p == "left" else p) for p in rel.parts])
                disp_right = self.root / subset / "disparity" / Path(*[("right" if p == "left" else p) for p in rel.parts])
                samples.append(dict(left=left, right=right, disp=disp, disp_right=disp_right.with_suffix(".pfm")))
        return samples

    def _load(self, p):
        out = dict(left=read_image(p["left"]), right=read_image(p["right"]), disp=read_pfm(p["disp"]))
        out["valid"] = np.isfinite(out["disp"]) & (out["disp"] > 0)
        if p["disp_right"].is_file():
            out["disp_right"] = read_pfm(p["disp_right"])
            out["valid_right"] = np.isfinite(out["disp_right"]) & (out["disp_right"] > 0)
        return out


@DATASETS.register_module()
class KITTIStereoDataset(StereoDataset):
    """KITTI 2015 (``version=2015``) or 2012 stereo training pairs with occ/noc ground truth."""

    name = "KITTI"
    LAYOUT = {2015: ("image_2", "image_3", "disp_occ_0", "disp_noc_0"),
              2012: ("colored_0", "colored_1", "disp_occ", "disp_noc")}

    def __init__(self, root: str, version: int = 2015, split: str = "training", transform=None):
        if version not in self.LAYOUT:
            raise ValueError(f"KITTI version must be 2012 or 2015, got {version!r}")
        self.version, self.split = version, split
        super().__init__(root, transform)

    def find_samples(self):
        left_dir, right_dir, occ_dir, noc_dir = self.LAYOUT[self.version]
        base = self.root / self.split
        return [dict(left=p, right=base / right_dir / p.name, disp=base / occ_dir / p.name, noc=base / noc_dir / p.name)
                for p in sorted((base / left_dir).glob("*_10.png"))]

    def _load(self, p):
        disp, valid = read_kitti_disparity(p["disp"])
        out = dict(left=read_image(p["left"]), right=read_image(p["right"]), disp=disp, valid=valid)
        if p["noc"].is_file():
            out["valid_noc"] = read_kitti_disparity(p["noc"])[1]
        return out


@DATASETS.register_module()
class MiddleburyDataset(StereoDataset):
    """Middlebury v3 (MiddEval3) or ETH3D two-view: ``<split>/<scene>/im0.png, im1.png, disp0GT.pfm``."""

    name = "Middlebury/ETH3D"

    def __init__(self, root: str, split: str = "trainingQ", transform=None):
        self.split = split
        super().__init__(root, transform)

    def find_samples(self):
        return [dict(left=d / "im0.png", right=d / "im1.png", disp=d / "disp0GT.pfm", noc=d / "mask0nocc.png")
                for d in sorted((self.root / self.split).iterdir()) if (d / "im0.png").is_file()] \
            if (self.root / self.split).is_dir() else []

    def _load(self, p):
        disp = read_pfm(p["disp"])
        valid = np.isfinite(disp)
        out = dict(left=read_image(p["left"]), right=read_image(p["right"]),
                   disp=np.where(valid, disp, 0).astype(np.float32), valid=valid)
        if p["noc"].is_file():
            mask = read_mask(p["noc"])
            if mask.shape != valid.shape:
                raise CorruptSampleError(p["noc"], f"mask is {mask.shape[1]}x{mask.shape[0]} but the disparity "
                                                   f"{str(p['disp'])!r} is {valid.shape[1]}x{valid.shape[0]}")
            out["valid_noc"] = valid & (mask == 255)
        return out


# --- benchmark submission layouts ------------------------------------------------------------

def write_submission(root: Union[str, Path], benchmark: str, scene: str, disp: np.ndarray, seconds: float,
                     split: str = "testF", method: str = "MatchStereo") -> Path:
    """Write one scene's disparity (H, W) px in a benchmark's upload layout; returns the PFM path.

    * ``middlebury``: ``<root>/MiddEval3_results/<split>/<scene>/disp0<method>.pfm`` + ``time<method>.txt``
      (seconds); the folder is zipped and uploaded as is.
    * ``eth3d``: ``<root>/low_res_two_view/<scene>.pfm`` + ``<scene>.txt`` holding ``runtime <seconds>``.
    """
    root = Path(root)
    if benchmark == "middlebury":
        folder = root / "MiddEval3_results" / split / scene
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"disp0{method}.pfm"
        (folder / f"time{method}.txt").write_text(f"{seconds:.6f}")
    elif benchmark == "eth3d":
        folder = root / "low_res_two_view"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{scene}.pfm"
        (folder / f"{scene}.txt").write_text(f"runtime {seconds:.6f}")
    else:
        raise ValueError(f"benchmark must be 'middlebury' or 'eth3d', got {benchmark!r}")
    write_pfm(path, disp)
    return path
