"""Spatial features fed to networks beside the image: landmark distances (and, later, atlases, centroids)."""

from brainseg.features.atlas import build_probabilistic_atlas
from brainseg.features.landmarks import landmark_distances, landmark_grid, rbf, voxel_centres_mm

__all__ = ["build_probabilistic_atlas", "landmark_distances", "landmark_grid", "rbf", "voxel_centres_mm"]
