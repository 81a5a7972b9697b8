"""Data shipped with brainseg: label protocols, the default model folder and the demo subject."""
