"""Segmentation metrics: overlap (Dice, volumetric similarity) and surface distances in mm."""
