"""Readers of face-restoration data: FFHQ-style training faces, paired test folders, single photos.

- :class:`FFHQFaces`: high-quality aligned faces, either an image folder (``*.png``/``*.jpg``,
  sorted by name) or a BasicSR LMDB (a ``<name>.lmdb`` folder with ``data.mdb`` and
  ``meta_info.txt``, one ``<key>.png (H,W,C) <compression>`` line per image, values PNG-encoded;
  needs the ``lmdb`` package of the ``face`` extra). A ``pipeline`` of pair transforms
  (:mod:`visionattn.datasets.face_degradations`) makes the LQ image on the fly; without an LQ
  step the item is the clean face itself (the dictionary stage autoencodes it). With
  ``components=<landmarks file>`` each item carries the eye and mouth boxes the component
  discriminators crop.
- :class:`PairedFaces`: a test set of ``lq/`` and ``gt/`` folders whose files share names
  (CelebA-Test); ``gt_dir=None`` for the real-world sets that have LQ images only (LFW-Test,
  WebPhoto-Test, WIDER-Test). ``root`` may also be one image file (a single photo).

Items: ``dict(inputs=(3, H, W) float32 RGB in [0, 1], data_samples=dict(gt=(3, H, W) (when there is
one), name=str[, components=(3, 4) float32 boxes x1, y1, x2, y2 of left eye, right eye, mouth]))``.
Images are read with OpenCV (BGR, 8 or 16 bit) and the transforms run in BGR, as the official
pipeline; the tensors are RGB.
"""
import json
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ..extras import require_extra
from ..registry import DATASETS, TRANSFORMS
from .corrupt import CorruptSampleError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
COMPONENTS = ("left_eye", "right_eye", "mouth")
README = "datasets/ffhq/README.md"


def decode_image(data: Union[bytes, np.ndarray], what: str, path: Optional[Path] = None) -> np.ndarray:
    """Encoded image bytes -> (H, W, 3) float32 BGR in [0, 1] (grey images are tiled to 3 channels).
    Undecodable data is a RuntimeError naming ``what`` (a CorruptSampleError of ``path`` when given)."""
    buf = np.frombuffer(data, np.uint8)
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if buf.size else None
    except cv2.error:
        img = None
    if img is None:
        problem = f"not an image OpenCV can decode ({buf.size} bytes: empty, damaged or another format)"
        if path is not None:
            raise CorruptSampleError(path, problem)
        raise RuntimeError(f"{what} is {problem}")
    peak = 65535.0 if img.dtype == np.uint16 else 255.0
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    elif img.shape[2] == 4:
        img = img[..., :3]
    return img.astype(np.float32) / peak


def read_image(path: Union[str, Path]) -> np.ndarray:
    """An image file -> (H, W, 3) float32 BGR in [0, 1]."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {str(path)!r} does not exist")
    return decode_image(path.read_bytes(), f"file {str(path)!r}", path)


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """(H, W, 3) BGR array -> (3, H, W) float32 RGB tensor."""
    return torch.from_numpy(np.ascontiguousarray(img[..., ::-1].transpose(2, 0, 1), dtype=np.float32))


def image_files(folder: Path) -> List[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {str(folder)!r} does not exist")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


class LMDBImages:
    """A BasicSR image LMDB: ``data.mdb`` + ``meta_info.txt``; opened lazily (once per worker)."""

    def __init__(self, root: Path):
        meta = root / "meta_info.txt"
        if not (root / "data.mdb").is_file() or not meta.is_file():
            raise FileNotFoundError(f"{str(root)!r} is not a BasicSR LMDB: it needs data.mdb and meta_info.txt "
                                    f"(see {README} for how to make one)")
        self.root = root
        self.keys = []
        for n, line in enumerate(meta.read_text().splitlines(), 1):
            if line.strip():
                name = line.split()[0]
                self.keys.append(name.rsplit(".", 1)[0] if "." in name else name)
        self._env = None

    def read(self, key: str) -> np.ndarray:
        if self._env is None:
            lmdb = require_extra("lmdb")
            self._env = lmdb.open(str(self.root), readonly=True, lock=False, readahead=False, meminit=False)
        with self._env.begin(write=False) as txn:
            data = txn.get(key.encode("ascii"))
        if data is None:
            raise KeyError(f"key {key!r} of {str(self.root / 'meta_info.txt')!r} is not in the LMDB")
        return decode_image(data, f"LMDB {str(self.root)!r} key {key!r}")

    def __getstate__(self):  # environments do not cross process boundaries: reopen in the worker
        return dict(self.__dict__, _env=None)


def load_components(path: Union[str, Path]) -> Dict[str, np.ndarray]:
    """Facial-component landmarks -> ``{key: (3, 3) float array of (x, y, half size)}`` for the left
    eye, right eye and mouth.

    Files: the official ``FFHQ_eye_mouth_landmarks_512.pth`` (``torch.save`` of ``{'00000000':
    {'left_eye': array([x, y, half]), 'right_eye': ..., 'mouth': ...}, ...}``, keys the 8-digit
    image index) or a JSON file of the same structure.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"facial-component landmarks file {str(path)!r} does not exist; the official one "
                                f"is FFHQ_eye_mouth_landmarks_512.pth (GFPGAN release v0.1.0), see {README}")
    if path.suffix == ".json":
        raw = json.loads(path.read_text())
    else:
        from ..hub import read_checkpoint  # weights-only load with numpy arrays allowed

        raw = read_checkpoint(path)
    out = {}
    for key, parts in raw.items():
        missing = [c for c in COMPONENTS if c not in parts]
        if missing:
            raise ValueError(f"landmarks of {key!r} in {str(path)!r} lack {missing} (need {list(COMPONENTS)})")
        out[str(key)] = np.stack([np.asarray(parts[c], dtype=np.float64).reshape(-1)[:3] for c in COMPONENTS])
    return out


def component_boxes(landmarks: np.ndarray, eye_enlarge: float = 1.4) -> np.ndarray:
    """(3, 3) (x, y, half size) -> (3, 4) float32 boxes ``x - h + 1, y - h + 1, x + h, y + h`` with the
    eyes' half size times ``eye_enlarge`` (the official rule and ratio)."""
    half = landmarks[:, 2].copy()
    half[:2] *= eye_enlarge
    xy = landmarks[:, :2]
    return np.concatenate([xy - half[:, None] + 1, xy + half[:, None]], axis=1).astype(np.float32)


def landmark_key(name: str) -> str:
    """The official landmark key of an FFHQ file name: ``'00042'`` -> ``'00000042'`` (8-digit index)."""
    return f"{int(name):08d}" if name.isdigit() else name


def build_pipeline(pipeline: Optional[Sequence]) -> List[Callable]:
    return [TRANSFORMS.build(t) if isinstance(t, dict) else t for t in (pipeline or [])]


def _rng(seed: Optional[int], index: int) -> np.random.Generator:
    """Fixed per item with a seed (held-out sets); otherwise fresh draws from torch's global generator,
    which mmengine seeds per worker and RandomStateHook restores on resume."""
    if seed is not None:
        return np.random.default_rng([int(seed), index])
    return np.random.default_rng(int(torch.randint(0, 2 ** 62, (1,))))


@DATASETS.register_module()
class FFHQFaces(Dataset):
    """FFHQ-style aligned faces (folder or BasicSR LMDB) with an on-the-fly degradation pipeline.

    Args:
        root: the image folder, or an LMDB folder (detected by ``data.mdb``; the official name ends
            in ``.lmdb``).
        pipeline: pair transforms (``dict(type=...)`` of ``TRANSFORMS``) run in order on
            ``dict(gt, rng[, components])``.
        components: a landmarks file (:func:`load_components`): items then carry ``components``
            boxes (:func:`component_boxes`, ``eye_enlarge``), keyed by the file name's index.
        seed: None draws new degradations every time (training); an int fixes each item's draws
            (a reproducible held-out set).
        max_items: keep the first ``max_items`` images.
        size: every image must be ``size`` x ``size`` (None: any size).
    """

    def __init__(self, root: Union[str, Path], pipeline: Optional[Sequence] = None,
                 components: Optional[Union[str, Path]] = None, eye_enlarge: float = 1.4,
                 seed: Optional[int] = None, max_items: Optional[int] = None, size: Optional[int] = None):
        root = Path(root)
        if (root / "data.mdb").is_file() or root.suffix == ".lmdb":
            self.lmdb: Optional[LMDBImages] = LMDBImages(root)
            self.names = list(self.lmdb.keys)
            self.files: List[Path] = []
        else:
            if not root.is_dir():
                raise FileNotFoundError(f"FFHQ root {str(root)!r} does not exist; see {README} for the layout "
                                        f"(or run python tools/make_samples.py --only faces for a tiny copy)")
            self.lmdb = None
            self.files = image_files(root)
            self.names = [p.stem for p in self.files]
        if max_items is not None:
            self.names, self.files = self.names[:max_items], self.files[:max_items]
        if not self.names:
            raise FileNotFoundError(f"no images under {str(root)!r} (suffixes {IMAGE_SUFFIXES})")
        self.root, self.size, self.seed, self.eye_enlarge = root, size, seed, eye_enlarge
        self.pipeline = build_pipeline(pipeline)
        self.components = None
        if components is not None:
            self.components = load_components(components)
            missing = [n for n in self.names if landmark_key(n) not in self.components]
            if missing:
                raise ValueError(f"{len(missing)} images have no landmarks in {str(components)!r} (e.g. "
                                 f"{missing[:3]} -> keys {[landmark_key(n) for n in missing[:3]]})")

    def __len__(self) -> int:
        return len(self.names)

    def read(self, index: int) -> np.ndarray:
        name = self.names[index]
        img = self.lmdb.read(name) if self.lmdb is not None else read_image(self.files[index])
        if self.size is not None and img.shape[:2] != (self.size, self.size):
            raise ValueError(f"image {name!r} of {str(self.root)!r} is {img.shape[1]}x{img.shape[0]}; the dataset "
                             f"expects {self.size}x{self.size} aligned faces (resize FFHQ as {README} says)")
        return img

    def __getitem__(self, index: int) -> dict:
        name = self.names[index]
        results = dict(gt=self.read(index), rng=_rng(self.seed, index), name=name)
        if self.components is not None:
            results["components"] = component_boxes(self.components[landmark_key(name)], self.eye_enlarge)
        for transform in self.pipeline:
            results = transform(results)
        gt = to_tensor(results["gt"])
        meta = dict(gt=gt, name=name)
        if "components" in results:
            meta["components"] = torch.as_tensor(results["components"], dtype=torch.float32)
        inputs = to_tensor(results["lq"]) if "lq" in results else gt.clone()
        return dict(inputs=inputs, data_samples=meta)


@DATASETS.register_module()
class PairedFaces(Dataset):
    """Paired (``lq/`` + ``gt/``) or LQ-only face test sets, or a single photo.

    Args:
        root: the set's folder (or one image file: a single photo, no GT).
        lq_dir / gt_dir: sub-folders of ``root``; files pair by name (stem). ``gt_dir=None``: no GT.
        max_items: keep the first ``max_items`` images.
    """

    def __init__(self, root: Union[str, Path], lq_dir: str = "lq", gt_dir: Optional[str] = "gt",
                 max_items: Optional[int] = None):
        root = Path(root)
        if root.is_file():
            self.lq, self.gt = [root], None
        else:
            if not root.is_dir():
                raise FileNotFoundError(f"face test set {str(root)!r} does not exist; see datasets/celeba_test/README.md")
            self.lq = image_files(root / lq_dir)
            self.gt = None
            if gt_dir is not None:
                gt_files = {p.stem: p for p in image_files(root / gt_dir)}
                missing = [p.name for p in self.lq if p.stem not in gt_files]
                if missing:
                    raise FileNotFoundError(f"{len(missing)} LQ images of {str(root / lq_dir)!r} have no GT in "
                                            f"{str(root / gt_dir)!r} (e.g. {missing[:3]}); pass gt_dir=None for an "
                                            f"LQ-only set")
                self.gt = [gt_files[p.stem] for p in self.lq]
        if max_items is not None:
            self.lq = self.lq[:max_items]
            self.gt = None if self.gt is None else self.gt[:max_items]
        if not self.lq:
            raise FileNotFoundError(f"no images in {str(root / lq_dir)!r}")

    def __len__(self) -> int:
        return len(self.lq)

    def __getitem__(self, index: int) -> dict:
        lq = read_image(self.lq[index])
        meta = dict(name=self.lq[index].stem)
        if self.gt is not None:
            gt = read_image(self.gt[index])
            if gt.shape != lq.shape:
                raise ValueError(f"{self.lq[index].name}: LQ is {lq.shape[1]}x{lq.shape[0]} but GT is "
                                 f"{gt.shape[1]}x{gt.shape[0]}; face test pairs must have the same size")
            meta["gt"] = to_tensor(gt)
        return dict(inputs=to_tensor(lq), data_samples=meta)
