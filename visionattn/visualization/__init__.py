"""Pictures of model inputs and outputs (bird's-eye views of LiDAR frames)."""
from .bev import bev_extent, box_footprints, draw_bev

__all__ = ["bev_extent", "box_footprints", "draw_bev"]
