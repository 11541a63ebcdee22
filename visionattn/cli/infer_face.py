"""Restore faces in photos with RestoreFormer / RestoreFormer++.

    visionattn-infer-face PHOTO|DIR --model restoreformerpp [--checkpoint RestoreFormer++.ckpt | --pretrained [NAME]]
        [--out out/]
        [--device cuda|cpu] [--dtype float32|bfloat16|float16] [--cuda-graph] [--reference HQ.png|HQ_DIR]
        [--aligned] [--detector-weights detection_Resnet50_Final.pth [--upscale 2] [--det-threshold 0.97]]

Which path an image takes:

- **512x512** (the size of the models' aligned faces), without ``--detector-weights``: restored as it is.
- **--aligned**: every image is restored as it is whatever its size; sizes that are not multiples
  of 32 are padded (reflect, bottom and right) and the output cropped back.
- **--detector-weights PATH** (needs ``pip install facexlib``; the file is facexlib's RetinaFace
  ``detection_Resnet50_Final.pth`` or ``detection_mobilenet0.25_Final.pth``): faces are detected
  with five landmarks each, warped to the FFHQ 512x512 five-point template, restored, warped back
  and blended into the photo with a feathered mask (``--upscale`` enlarges the background with
  Lanczos first and pastes the faces at that scale).
- anything else: an error saying which of the two to pass.

Per input image ``NAME.*`` it writes to ``--out``: ``NAME_restored.png`` (same size as the input,
times ``--upscale`` on the detection path), ``NAME_compare.png`` (input | restored | reference when
``--reference`` gives one; panels at the restored image's size) and, on the detection path,
``NAME_face<k>.png`` (the k-th restored aligned face).

The networks take RGB in [-1, 1] (``uint8 / 127.5 - 1``) and their output is clamped to that range
before conversion back to 8 bits, as in the official inference. On CUDA the model runs in
channels_last memory format (the fused GroupNorm and convolution kernels are fastest there);
``--cuda-graph`` replays it from a CUDA graph captured once per image size (a folder of 512x512
faces is one capture).

Weights: ``--checkpoint`` (a file or URL, official or ours), ``--pretrained`` (the model-zoo entry of
``--model``) or ``--pretrained NAME`` (a zoo entry, e.g. ``restoreformer.gfpgan``; ``visionattn-zoo
list restoreformer*``); without any of them the tool stops unless ``--random-weights`` is given.
In a clone, ``python tools/infer_face.py`` is the same program.
"""
import argparse
import sys
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
from mmengine.config import DictAction

import visionattn
from visionattn.cli.console import ArgumentParser, UsageError, cli_main
from visionattn.extras import require_extra
from visionattn.inference import restore_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
ALIGNED_SIZE = 512
# FFHQ's five-point template at 512x512 (eye centres, nose tip, mouth corners; x, y), the alignment
# that RestoreFormer / GFPGAN training faces were cropped with.
FFHQ_TEMPLATE_512 = np.array([[192.98138, 239.94708], [318.90277, 240.19360], [256.63416, 314.01935],
                              [201.26117, 371.41043], [313.08905, 371.15118]], dtype=np.float32)
BORDER_GRAY = (132, 133, 135)  # RGB fill outside the photo when a face crop reaches past its edge
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_args(argv=None):
    ap = ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("input", help="an image file or a folder of images")
    ap.add_argument("--model", default="restoreformerpp", help="restoreformerpp or restoreformer")
    ap.add_argument("--checkpoint", default=None, help="weights: official .ckpt/.pth or ours")
    ap.add_argument("--pretrained", nargs="?", const=True, default=None, metavar="NAME",
                    help="model-zoo weights: of --model, or of the zoo entry NAME (visionattn-zoo list)")
    ap.add_argument("--random-weights", action="store_true",
                    help="run the untrained network (its output is noise): for trying the tool without weights")
    ap.add_argument("--model-kwargs", nargs="*", default={}, action=DictAction, metavar="K=V",
                    help="create_model keyword arguments (e.g. a smaller network for tests)")
    ap.add_argument("--out", default="out")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    ap.add_argument("--cuda-graph", action="store_true", help="CUDA: replay the network from a graph per image size")
    ap.add_argument("--reference", default=None, help="high-quality image (one input) or folder (same names)")
    ap.add_argument("--aligned", action="store_true", help="restore every image as it is (no detection)")
    ap.add_argument("--detector-weights", default=None, help="facexlib RetinaFace weights: detect and align faces")
    ap.add_argument("--det-threshold", type=float, default=0.97, help="face detection score threshold")
    ap.add_argument("--upscale", type=int, default=1, help="detection path: enlarge the photo by this factor")
    return ap.parse_args(argv)


# --- images ------------------------------------------------------------------------------------

def read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB (grey images repeated, alpha dropped, 16-bit scaled to 8)."""
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot read {str(path)!r} as an image (suffixes read: {', '.join(IMAGE_SUFFIXES)})")
    return np.ascontiguousarray(bgr[:, :, ::-1])


def write_rgb(path: Path, rgb: np.ndarray) -> None:
    import cv2

    if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1])):
        raise OSError(f"could not write {str(path)!r}")


def list_inputs(src: Path) -> List[Path]:
    if src.is_dir():
        paths = sorted(p for p in src.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in the folder {str(src)!r}")
        return paths
    if not src.exists():
        raise FileNotFoundError(f"input {str(src)!r} does not exist")
    return [src]


def compare_png(path: Path, panels: List[np.ndarray]) -> None:
    """Panels side by side, each resized (bicubic) to the size of the second (the restored image)."""
    import cv2

    h, w = panels[1].shape[:2]
    row = [p if p.shape[:2] == (h, w) else cv2.resize(p, (w, h), interpolation=cv2.INTER_CUBIC) for p in panels]
    write_rgb(path, np.concatenate(row, axis=1))


# --- the network on whole images ---------------------------------------------------------------

@torch.no_grad()
def run_network(model: nn.Module, rgb: np.ndarray, device: torch.device, dtype: torch.dtype,
                cuda_graph: bool = False) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> restored (H, W, 3) uint8 RGB. :func:`visionattn.inference.restore_image`
    checks the range, maps [0, 1] to the network's [-1, 1], pads to a multiple of its
    ``size_multiple`` (reflect, bottom and right) and crops back; the output is clamped."""
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].to(device=device, dtype=torch.float32).div(255.0)
    y = restore_image(model, x.to(dtype), value_range=(0.0, 1.0), network_range=(-1.0, 1.0), cuda_graph=cuda_graph)
    return y[0].float().clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


# --- detection, alignment, paste-back -----------------------------------------------------------

class FaceDetector:
    """facexlib's RetinaFace with weights from a local file (nothing is downloaded): five landmarks
    per face (left eye, right eye, nose, left and right mouth corner) in pixel coordinates."""

    def __init__(self, weights: str, device: torch.device):
        if not Path(weights).is_file():
            raise FileNotFoundError(f"--detector-weights {weights!r} does not exist; it is facexlib's RetinaFace "
                                    f"file, e.g. detection_Resnet50_Final.pth of facexlib's v0.1.0 GitHub release")
        try:
            require_extra("facexlib")
            from facexlib.detection.retinaface import RetinaFace
        except ImportError as err:
            raise RuntimeError("detecting and aligning faces needs facexlib: pip install facexlib (the extra "
                               "'visionattn[face-detect]'), or restore already aligned faces with --aligned") from err
        state = torch.load(weights, map_location="cpu", weights_only=True)
        state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
        network = "mobile0.25" if any(k.startswith("body.stage1") for k in state) else "resnet50"
        self.net = RetinaFace(network_name=network, half=False, device=device)
        self.net.load_state_dict(state, strict=True)
        self.net.eval()

    @torch.no_grad()
    def landmarks(self, rgb: np.ndarray, threshold: float) -> List[np.ndarray]:
        """(k, 5, 2) float32 landmarks of the faces scoring above ``threshold``."""
        dets = self.net.detect_faces(np.ascontiguousarray(rgb[:, :, ::-1]), threshold)  # BGR in
        return [np.asarray(d[5:15], dtype=np.float32).reshape(5, 2) for d in dets]


def align(rgb: np.ndarray, landmarks: np.ndarray, size: int = ALIGNED_SIZE) -> Tuple[np.ndarray, np.ndarray]:
    """Similarity transform (rotation, uniform scale, shift) taking the landmarks to the FFHQ
    template, and the size x size crop it gives. Returns (crop, 2x3 matrix photo -> crop)."""
    import cv2

    matrix = cv2.estimateAffinePartial2D(landmarks, FFHQ_TEMPLATE_512 * (size / 512.0), method=cv2.LMEDS)[0]
    if matrix is None:
        raise ValueError(f"could not fit the face template to the landmarks {landmarks.tolist()}")
    crop = cv2.warpAffine(rgb, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=BORDER_GRAY)
    return crop, matrix


def paste_back(canvas: np.ndarray, face: np.ndarray, matrix: np.ndarray, scale: float) -> np.ndarray:
    """Blend ``face`` (the restored crop) into ``canvas`` (float32, the photo enlarged ``scale``
    times) where the crop came from. The mask is the crop's footprint, shrunk away from its edge
    and feathered over about a twentieth of the face's side."""
    import cv2

    h, w = canvas.shape[:2]
    back = cv2.invertAffineTransform(matrix) * scale  # crop -> enlarged photo
    warped = cv2.warpAffine(face.astype(np.float32), back, (w, h), flags=cv2.INTER_LINEAR)
    mask = cv2.warpAffine(np.ones(face.shape[:2], np.float32), back, (w, h), flags=cv2.INTER_LINEAR)
    side = float(np.sqrt(mask.sum()))  # the face crop's side in canvas pixels
    if side < 4:
        return canvas
    feather = max(int(side / 20), 1)
    mask = cv2.erode(mask, np.ones((2 * feather + 1, 2 * feather + 1), np.uint8))
    mask = cv2.GaussianBlur(mask, (0, 0), sigmaX=feather / 2)[:, :, None]
    return mask * warped + (1.0 - mask) * canvas


class FaceRestorer:
    """The network on aligned faces, directly or through detection, alignment and paste-back."""

    def __init__(self, model: nn.Module, device, dtype: torch.dtype = torch.float32,
                 detector: Optional[FaceDetector] = None, aligned: bool = False, upscale: int = 1,
                 det_threshold: float = 0.97, cuda_graph: bool = False):
        if upscale < 1:
            raise ValueError(f"--upscale must be >= 1, got {upscale}")
        self.model, self.device, self.dtype, self.cuda_graph = model, torch.device(device), dtype, cuda_graph
        self.detector, self.aligned, self.upscale, self.det_threshold = detector, aligned, upscale, det_threshold

    def restore(self, rgb: np.ndarray, name: str = "image") -> Tuple[np.ndarray, List[np.ndarray]]:
        """(H, W, 3) uint8 RGB -> (restored image, restored aligned faces: empty unless detected)."""
        H, W = rgb.shape[:2]
        if self.aligned or ((H, W) == (ALIGNED_SIZE, ALIGNED_SIZE) and self.detector is None):
            return run_network(self.model, rgb, self.device, self.dtype, self.cuda_graph), []
        if self.detector is None:
            raise ValueError(
                f"{name} is {W}x{H}, not an aligned {ALIGNED_SIZE}x{ALIGNED_SIZE} face. Pass --aligned to restore it "
                f"as it is (padded to a multiple of {getattr(self.model, 'size_multiple', 1)}), or detect and align "
                f"the faces in it: pip install facexlib and pass --detector-weights PATH (facexlib's RetinaFace "
                f"detection_Resnet50_Final.pth, from its v0.1.0 GitHub release)")
        import cv2

        canvas = rgb.astype(np.float32)
        if self.upscale > 1:
            canvas = cv2.resize(canvas, (W * self.upscale, H * self.upscale), interpolation=cv2.INTER_LANCZOS4)
        faces = []
        for landmarks in self.detector.landmarks(rgb, self.det_threshold):
            crop, matrix = align(rgb, landmarks)
            face = run_network(self.model, crop, self.device, self.dtype, self.cuda_graph)
            canvas = paste_back(canvas, face, matrix, float(self.upscale))
            faces.append(face)
        if not faces:
            print(f"{name}: no face found above --det-threshold {self.det_threshold}; written unchanged",
                  file=sys.stderr)
        return np.clip(canvas, 0, 255).round().astype(np.uint8), faces


def build_model(args) -> nn.Module:
    """The network of ``--model`` with the weights of ``--checkpoint`` / ``--pretrained [NAME]``; without
    weights a UsageError unless ``--random-weights``."""
    if args.checkpoint is not None and args.pretrained:
        raise UsageError("pass either --checkpoint or --pretrained, not both")
    if args.checkpoint is None and not args.pretrained and not args.random_weights:
        raise UsageError("no weights: pass --checkpoint PATH_OR_URL (RestoreFormer++.ckpt, ...) or --pretrained "
                         "[NAME] (model-zoo weights; visionattn-zoo list restoreformer*), or --random-weights to "
                         "run the untrained network (its output is noise)")
    if isinstance(args.pretrained, str):  # a zoo entry by name, through visionattn.hub
        from visionattn import hub

        if not hub.has_entry(args.pretrained):
            names = [e.name for e in hub.list_entries("restoreformer*")]
            raise UsageError(f"--pretrained {args.pretrained!r} is not a model-zoo entry; face entries: {names}")
        model = visionattn.create_model(args.pretrained, pretrained=True, **args.model_kwargs)
    else:
        model = visionattn.create_model(args.model, pretrained=bool(args.pretrained), checkpoint=args.checkpoint,
                                        **args.model_kwargs)
    model = model.to(device=args.device, dtype=DTYPES[args.dtype]).eval()
    if torch.device(args.device).type == "cuda":
        torch.backends.cudnn.benchmark = True
        model = model.to(memory_format=torch.channels_last)
    return model


def _reference_for(reference: Optional[str], path: Path, several: bool) -> Optional[Path]:
    if reference is None:
        return None
    ref = Path(reference)
    if ref.is_dir():
        matches = sorted(p for p in ref.iterdir() if p.stem == path.stem and p.suffix.lower() in IMAGE_SUFFIXES)
        return matches[0] if matches else None
    if several:
        raise ValueError(f"--reference {reference!r} is one file but the input is a folder; give a folder of "
                         f"references with the inputs' names")
    if not ref.is_file():
        raise FileNotFoundError(f"--reference {reference!r} does not exist")
    return ref


@cli_main
def main(argv=None) -> int:
    args = parse_args(argv)
    inputs = list_inputs(Path(args.input))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    detector = FaceDetector(args.detector_weights, torch.device(args.device)) if args.detector_weights else None
    restorer = FaceRestorer(build_model(args), args.device, DTYPES[args.dtype], detector=detector,
                            aligned=args.aligned, upscale=args.upscale, det_threshold=args.det_threshold,
                            cuda_graph=args.cuda_graph)
    for path in inputs:
        rgb = read_rgb(path)
        restored, faces = restorer.restore(rgb, name=str(path))
        write_rgb(out_dir / f"{path.stem}_restored.png", restored)
        for k, face in enumerate(faces):
            write_rgb(out_dir / f"{path.stem}_face{k}.png", face)
        panels = [rgb, restored]
        ref = _reference_for(args.reference, path, len(inputs) > 1)
        if ref is not None:
            panels.append(read_rgb(ref))
        compare_png(out_dir / f"{path.stem}_compare.png", panels)
        print(f"{path} -> {out_dir / (path.stem + '_restored.png')}" + (f" ({len(faces)} faces)" if detector else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
