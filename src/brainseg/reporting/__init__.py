"""What ``brainseg segment`` writes beside each label map: structure volumes and QC figures."""

from brainseg.reporting.qc import qc_figure, save_qc_png
from brainseg.reporting.volumes import read_volumes_csv, structure_volumes, write_volumes_csv

__all__ = ["qc_figure", "read_volumes_csv", "save_qc_png", "structure_volumes", "write_volumes_csv"]
