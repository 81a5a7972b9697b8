"""Spatial features fed to networks beside the image: landmark distances and probabilistic atlases."""

from brainseg.features.atlas import ProbabilisticAtlas
from brainseg.features.landmarks import landmark_distances, landmark_grid, rbf, voxel_centres_mm

__all__ = ["ProbabilisticAtlas", "landmark_distances", "landmark_grid", "rbf", "voxel_centres_mm"]
