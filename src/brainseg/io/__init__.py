"""Reading and writing volumes and case manifests."""

from brainseg.io.discovery import scan_folder
from brainseg.io.manifest import Case, read_manifest, write_manifest
from brainseg.io.nifti import Grid, Volume, load_volume, save_volume

__all__ = ["Case", "Grid", "Volume", "load_volume", "read_manifest", "save_volume", "scan_folder", "write_manifest"]
