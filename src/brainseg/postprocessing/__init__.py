"""Post-processing of label maps and probabilities (the fully connected CRF of DeepNAT lands here)."""
