"""BEV pictures: orientation (x up, y left), height colours, heading tick, degenerate inputs."""
import numpy as np
import pytest

from visionattn.visualization import bev_extent, box_footprints, draw_bev


def test_orientation_box_and_heading_tick():
    # one point 5 m ahead, 2 m to the left; a box 6 m ahead facing +y (heading pi/2)
    points = np.array([[5.0, 2.0, 0.0, 0.0]], np.float32)
    box = np.array([[6.0, -3.0, 0.0, 2.0, 1.0, 1.5, np.pi / 2]])
    image = draw_bev(points, box, labels=[0], extent=(0, 10, -5, 5), resolution=0.1)
    assert image.shape == (100, 100, 3)
    assert image[(10 - 5) * 10 - 1:(10 - 5) * 10 + 1, (5 - 2) * 10 - 1:(5 - 2) * 10 + 1].any()  # row 50, col 30
    # heading tick: from the centre (row 40, col 80) towards +y, i.e. to the left (col 70)
    tick = image[40, 71:79].astype(int)
    assert (np.abs(tick - (0, 140, 255)) <= 10).all(1).sum() >= 5
    assert not (np.abs(image[40, 83:89].astype(int) - (0, 140, 255)) <= 10).all(1).any()  # nothing towards -y


def test_footprints_and_extent():
    corners = box_footprints(np.array([[0, 0, 0, 4, 2, 1, 0.0]]))
    np.testing.assert_allclose(corners[0], [[2, 1], [-2, 1], [-2, -1], [2, -1]])
    lo_x, hi_x, lo_y, hi_y = bev_extent(np.zeros((0, 4)), (np.array([[10, 0, 0, 4, 2, 1, 0.0]]),), margin=1)
    assert (lo_x, hi_x, lo_y, hi_y) == (7.0, 13.0, -2.0, 2.0)


def test_degenerate_inputs():
    assert draw_bev(np.zeros((0, 4)), extent=(0, 4, -2, 2)).shape == (40, 40, 3)
    huge = np.array([[1, 0, 0, 1e20, np.inf, 1, 0.0], [np.nan] * 7])  # an untrained network's boxes
    assert draw_bev(np.zeros((3, 4), np.float32), huge, labels=[0, 1], scores=[0.5, 0.4], extent=(0, 4, -2, 2)).any()
    with pytest.raises(ValueError, match="2 boxes but 1 labels"):
        draw_bev(np.zeros((1, 3)), huge, labels=[0])
    with pytest.raises(ValueError, match="min < max"):
        draw_bev(np.zeros((1, 3)), extent=(4, 0, -2, 2))
    assert draw_bev(np.zeros((1, 3)), extent=(0, 1000, -2, 2), max_size=500).shape[0] == 500
