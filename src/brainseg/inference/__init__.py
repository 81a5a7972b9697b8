"""Dense (whole-volume) inference, the Predictor API and ``brainseg.segment``."""
