"""3-D boxes of one LiDAR frame with a visionattn LiDAR detector, as a KITTI label file and a BEV picture.

    visionattn-infer-lidar FRAME.bin|FRAME.npy --model scatterformer_kitti --checkpoint PATH_OR_URL \\
        [--calib calib.txt] [--gt label_2.txt] [--score-thr 0.3] [--out out/] [--device cuda]

Input: a KITTI ``velodyne`` ``.bin`` (float32 x, y, z, reflectance), or a ``.npy``: (N, 6) as OpenPCDet's
Waymo processing writes it (x, y, z, intensity, elongation, no-label-zone flag; points in a no-label
zone dropped, tanh on intensity and elongation, as the Waymo data pipeline does), or any other (N, C)
float array used as given. C must be the network's point features (4 for ``scatterformer_kitti``, 5 for
``scatterformer_waymo``).

Weights: ``--checkpoint`` (ours or an OpenPCDet checkpoint, local path or URL, loaded strictly through
``visionattn.create_model``) or ``--pretrained`` (the model zoo). Without either the program stops;
``--random-weights`` runs an untrained network (to check the pipeline only: its boxes mean nothing).
A checkpoint trained with a config that changes the network's settings (a smaller ``point_cloud_range``,
other classes) needs that config: ``--config CONFIG`` builds the network its ``model.network`` describes
(name and settings) instead of ``--model`` with its defaults.

Writes, for ``FRAME``:

* ``<out>/FRAME.txt``: the detections with score >= ``--score-thr`` in the KITTI results format (15 label
  fields + score). With ``--calib`` (a KITTI ``calib/*.txt``) the boxes are in camera 2's rectified frame
  with their projected 2-D boxes, as KITTI expects. Without it, the file holds LiDAR-frame boxes written
  with KITTI's camera axes (camera x = -LiDAR y, camera y = -LiDAR z, camera z = LiDAR x, no translation:
  location = the LiDAR bottom centre re-expressed that way, rotation_y = -heading - pi/2) and ``-1`` for
  the 2-D box, truncation and occlusion; the program says so when it writes it.
* ``<out>/FRAME_lidar.txt``: the same detections in the LiDAR frame, one per line:
  ``class x y z dx dy dz heading score`` (box centre, OpenPCDet's convention).
* ``<out>/FRAME_bev.png``: the network's point-cloud range seen from above (x forward = up, ``--resolution``
  m/px), points coloured by height, predicted boxes coloured by class with a heading tick and their score,
  and the ground truth of ``--gt`` (a KITTI ``label_2`` file; needs ``--calib``) in white.

In a clone, ``python tools/infer_lidar.py`` is the same program.
"""
import argparse
import sys
import time
from pathlib import Path
from typing import Tuple

import cv2
import numpy as np
import torch

import visionattn
from visionattn.datasets.lidar_formats import (KITTI_IMAGE_SHAPE, kitti_label_to_lidar_boxes, read_kitti_calib,
                                               read_kitti_label, read_kitti_points, read_waymo_points,
                                               write_kitti_label)
from visionattn.inference import predict_boxes_3d
from visionattn.visualization import draw_bev
from visionattn.cli.console import ArgumentParser, UsageError, cli_main

# LiDAR frame re-expressed with KITTI's camera axes (no extrinsic translation): what is written without --calib
AXES_ONLY_CALIB = dict(P2=np.array([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]), R0_rect=np.eye(3),
                       Tr_velo_to_cam=np.array([[0.0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0]]))


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="a KITTI velodyne .bin or a .npy point cloud")
    p.add_argument("--model", default="scatterformer_kitti", help="scatterformer_kitti or scatterformer_waymo")
    p.add_argument("--config", help="a training config whose model.network (name and settings, e.g. "
                                    "point_cloud_range) builds the network instead of --model")
    p.add_argument("--checkpoint", help="weights: local path or URL, ours or an OpenPCDet checkpoint")
    p.add_argument("--pretrained", action="store_true", help="load the model-zoo weights of --model")
    p.add_argument("--random-weights", action="store_true",
                   help="run an untrained network (pipeline check; the boxes mean nothing)")
    p.add_argument("--calib", help="KITTI calib/*.txt: write camera-frame labels with projected 2-D boxes")
    p.add_argument("--image-shape", type=int, nargs=2, metavar=("H", "W"), default=list(KITTI_IMAGE_SHAPE),
                   help="image size the 2-D boxes are clipped to (default KITTI's 375 1242)")
    p.add_argument("--gt", help="KITTI label_2 file of the frame to draw (needs --calib)")
    p.add_argument("--score-thr", type=float, default=0.3, help="keep detections with at least this score")
    p.add_argument("--out", default="out", help="output folder")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--resolution", type=float, default=0.1, help="BEV picture metres per pixel")
    return p.parse_args(argv)


def read_points(path: str, num_features: int) -> Tuple[np.ndarray, str]:
    """(N, C) float32 points of a .bin / .npy file and a phrase saying how they were read."""
    src = Path(path)
    if not src.is_file():
        raise FileNotFoundError(f"point cloud {path!r} does not exist")
    if src.suffix == ".bin":
        return read_kitti_points(src, num_features), f"KITTI .bin, {num_features} float32 per point"
    if src.suffix != ".npy":
        raise ValueError(f"{path!r}: expected a .bin (KITTI velodyne) or .npy point cloud, got {src.suffix!r}")
    raw = np.load(src, allow_pickle=False, mmap_mode="r")
    if raw.ndim == 2 and raw.shape[1] == 6 and num_features == 5:
        return read_waymo_points(src), "OpenPCDet Waymo .npy (no-label-zone points dropped, tanh on features)"
    if raw.ndim != 2 or raw.shape[1] != num_features or not np.issubdtype(raw.dtype, np.floating):
        raise ValueError(f"{path!r}: the network takes (N, {num_features}) float points (x, y, z + "
                         f"{num_features - 3} features), the file holds {raw.dtype} {raw.shape}; pick the --model "
                         f"of this data (scatterformer_kitti: 4 columns, scatterformer_waymo: 5, or OpenPCDet's "
                         f"6-column Waymo .npy)")
    return np.asarray(raw, np.float32), f".npy used as given ({num_features} columns)"


def lidar_lines(names, boxes: np.ndarray, scores: np.ndarray) -> str:
    return "".join(f"{n} " + " ".join(f"{v:.4f}" for v in b) + f" {s:.4f}\n" for n, b, s in zip(names, boxes, scores))


def network_from_config(path: str) -> Tuple[str, dict]:
    """(model name, constructor settings) of a training config's ``model.network``."""
    from visionattn.engine import load_config  # mmengine only when a config is given

    network = load_config(path).model.get("network")
    if isinstance(network, str):
        network = dict(name=network)
    if not (isinstance(network, dict) and isinstance(network.get("name"), str)):
        raise UsageError(f"--config {path}: model.network must be dict(name='scatterformer_...', ...) or a "
                         f"model name; got {network!r}")
    settings = {k: v for k, v in network.items() if k != "name"}
    return network["name"], {k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()}


@cli_main
def main(argv=None) -> int:
    args = parse_args(argv)
    if args.checkpoint is None and not args.pretrained and not args.random_weights:
        raise UsageError("no weights: pass --checkpoint PATH (ours or an OpenPCDet checkpoint) or "
                         "--pretrained; --random-weights runs an untrained network to check the pipeline only")
    if args.gt and not args.calib:
        raise UsageError("--gt needs --calib (KITTI labels are camera-frame boxes)")
    if not 0 <= args.score_thr <= 1:
        raise UsageError(f"--score-thr must be in [0, 1], got {args.score_thr}")
    calib = read_kitti_calib(args.calib) if args.calib else None
    name, settings = network_from_config(args.config) if args.config else (args.model, {})
    model = visionattn.create_model(name, pretrained=args.pretrained, checkpoint=args.checkpoint, **settings)
    if getattr(model, "task", None) != "detection3d" and not hasattr(model, "num_point_features"):
        raise ValueError(f"{args.model!r} is not a LiDAR detector (task {getattr(model, 'task', None)!r})")
    model = model.to(args.device).eval()
    points, how = read_points(args.input, model.num_point_features)
    batch = torch.cat([torch.zeros(len(points), 1), torch.from_numpy(points)], 1).to(args.device)
    start = time.perf_counter()
    det = predict_boxes_3d(model, batch, batch_size=1)[0]
    seconds = time.perf_counter() - start
    keep = det["scores"] >= args.score_thr
    boxes = det["boxes"][keep].double().cpu().numpy().reshape(-1, 7)
    scores = det["scores"][keep].double().cpu().numpy()
    labels = det["labels"][keep].cpu().numpy()
    names = [model.class_names[int(c)] for c in labels]

    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    stem = Path(args.input).stem
    label_path = folder / f"{stem}.txt"
    shape = tuple(args.image_shape)
    if calib is not None:
        write_kitti_label(label_path, names, boxes, calib, scores=scores, image_shape=shape)
        frame = f"camera 2 rectified frame ({args.calib})"
    else:
        unknown = -np.ones(len(boxes))
        write_kitti_label(label_path, names, boxes, AXES_ONLY_CALIB, bbox=-np.ones((len(boxes), 4)),
                          truncated=unknown, occluded=unknown.astype(np.int64), scores=scores)
        frame = ("LiDAR frame with KITTI's camera axes (no --calib: camera x = -y, y = -z, z = x of the LiDAR, "
                 "no translation; 2-D box, truncation, occlusion = -1)")
    (folder / f"{stem}_lidar.txt").write_text(lidar_lines(names, boxes, scores))

    gt_boxes = None
    if args.gt:
        label = read_kitti_label(args.gt)
        gt_boxes = kitti_label_to_lidar_boxes(label, calib)[label["name"] != "DontCare"]
    x0, y0, _, x1, y1, _ = model.point_cloud_range
    image = draw_bev(points, boxes, labels, scores, gt_boxes=gt_boxes, class_names=model.class_names,
                     extent=(x0, x1, y0, y1), resolution=args.resolution)
    bev_path = folder / f"{stem}_bev.png"
    cv2.imwrite(str(bev_path), image)
    counts = ", ".join(f"{(labels == c).sum()} {n}" for c, n in enumerate(model.class_names))
    print(f"{args.input}: {len(points)} points ({how}); {len(boxes)} boxes with score >= {args.score_thr} "
          f"({counts}) of {len(det['scores'])}, {seconds * 1000:.0f} ms")
    print(f"{label_path}: KITTI label format, {frame}")
    print(f"{folder / (stem + '_lidar.txt')}: LiDAR frame (class x y z dx dy dz heading score, box centre)")
    print(f"{bev_path}: BEV {image.shape[1]}x{image.shape[0]} px" + (f", ground truth {len(gt_boxes)} boxes"
                                                                     if gt_boxes is not None else ""))
    if args.random_weights and args.checkpoint is None and not args.pretrained:
        print("note: random weights (--random-weights): the boxes mean nothing", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
