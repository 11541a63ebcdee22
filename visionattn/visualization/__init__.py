"""Pictures of model inputs and outputs: bird's-eye views of LiDAR frames (:mod:`.bev`), predictions of
the image tasks (:mod:`.predictions`)."""
from . import predictions
from .bev import bev_extent, box_footprints, draw_bev

__all__ = ["bev_extent", "box_footprints", "draw_bev", "predictions"]
