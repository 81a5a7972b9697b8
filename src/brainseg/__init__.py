"""brainseg: brain MRI segmentation with spatially aware convolutional networks."""

__version__ = "0.1.0"
