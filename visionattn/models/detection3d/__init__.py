"""LiDAR 3-D detection networks.

Modules that run sparse convolutions need the ``3d`` extra (spconv) and are imported only when one
of their networks is built (``visionattn.registry.lazy``).
"""
from ...registry import lazy

lazy(f"{__name__}.sparse_backend", extra="spconv")
lazy(f"{__name__}.scatterformer_backbone", extra="spconv")
lazy(f"{__name__}.scatterformer", extra="spconv", networks=["scatterformer_waymo", "scatterformer_kitti"])
