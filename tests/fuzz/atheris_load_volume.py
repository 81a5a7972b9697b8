"""Coverage-guided fuzzing of the validation gate with atheris (a developer tool, not run by CI).

``load_volume`` (and so every command) must either return a volume or raise ``InputError``; any other
exception is a crash that a user would see as a traceback. atheris mutates the bytes of a few valid
NIfTI and MGZ files, steering by the Python lines each input reaches (nibabel's parsers included),
which finds byte-level corner cases the structured hypothesis tests in ``test_fuzz_inputs.py`` do not
generate.

Run (``pip install atheris``; a crash is written to ``crash-*`` and re-run by giving its path)::

    python tests/fuzz/atheris_load_volume.py -max_total_time=300 -rss_limit_mb=4096
"""

from __future__ import annotations

import gzip
import io
import logging
import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    import nibabel as nib
    import numpy as np

    from brainseg.errors import InputError
    from brainseg.io import load_volume, validation

SUFFIXES = (".nii", ".nii.gz", ".mgz")
FOLDER = Path(tempfile.mkdtemp(prefix="brainseg-atheris-"))


def _seeds() -> list[bytes]:
    """Valid files, one per format, each prefixed with the byte that picks its suffix."""
    shape = (10, 12, 9)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    data = np.where(sum(g**2 for g in grids) < 0.8, 100 + 20 * np.random.default_rng(0).standard_normal(shape), 0)
    affine = np.diag([-1.2, 1.0, 2.0, 1.0])
    seeds = []
    for code, suffix in enumerate(SUFFIXES):
        image = (nib.MGHImage if suffix == ".mgz" else nib.Nifti1Image)(data.astype(np.int16), affine)
        buffer = io.BytesIO()
        image.to_file_map({"image": nib.FileHolder(fileobj=buffer), "header": nib.FileHolder(fileobj=buffer)})
        raw = buffer.getvalue()
        seeds.append(bytes([code]) + (gzip.compress(raw) if suffix in (".nii.gz", ".mgz") else raw))
    return seeds


def test_one_input(blob: bytes) -> None:
    """Write the bytes as a file and load it: a volume or an InputError, nothing else."""
    if not blob:
        return
    path = FOLDER / f"input{SUFFIXES[blob[0] % len(SUFFIXES)]}"
    path.write_bytes(blob[1:])
    try:
        load_volume(path)
    except InputError:
        pass


def main() -> None:
    """Run atheris with the seeds written to a corpus folder (unless one is given)."""
    logging.getLogger("nibabel.global").handlers.clear()
    from dataclasses import replace

    validation.LIMITS = replace(validation.LIMITS, min_field_of_view_mm=8.0)  # let the small seeds through
    args = sys.argv[:]
    if not any(not a.startswith("-") for a in args[1:]):
        corpus = FOLDER / "corpus"
        corpus.mkdir()
        for i, seed in enumerate(_seeds()):
            (corpus / f"seed{i}").write_bytes(seed)
        args.append(str(corpus))
    atheris.Setup(args, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
