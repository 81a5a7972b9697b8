"""Training patches: multi-scale 2-D patch extraction and voxel samplers."""
