"""Finding cases on disk: a MICCAI-style folder, glob patterns of separate folders, a BIDS dataset.

Each finder returns :class:`~brainseg.io.manifest.Case` objects for :func:`~brainseg.io.manifest.write_manifest`
(``brainseg manifest``); label maps and masks are checked to lie on their image's grid.
"""

from __future__ import annotations

import re
from pathlib import Path

from brainseg.errors import InputError
from brainseg.io.manifest import Case

__all__ = ["check_same_grid", "pair_by_patterns", "scan_bids", "scan_folder"]


def scan_folder(
    folder: str | Path,
    image_pattern: str = r"(?P<case_id>.+)_SS\.nii(\.gz)?$",
    label_suffix: str = "_glm",
    mask_suffix: str = "_mask",
) -> list[Case]:
    """Find cases in a folder laid out like the MICCAI 2012 data.

    Images match ``image_pattern`` (a regular expression with a ``case_id``
    group); the label map and mask share the case id with ``label_suffix`` and
    ``mask_suffix`` and the same extension.

    Parameters
    ----------
    folder : str or Path
        The data folder (not searched recursively).
    image_pattern : str
        Regular expression matched at the start of each file name (:func:`re.match`), with a group
        ``case_id``; default: MICCAI 2012's ``ID_SS.nii[.gz]``.
    label_suffix, mask_suffix : str
        The label map and brain mask are ``<case_id><suffix>`` with the image's extension (``.nii.gz`` or
        ``.nii``).

    Returns
    -------
    list of Case
        In file-name order; ``label_map`` and ``mask`` are None where that file does not exist.

    Raises
    ------
    InputError
        If the folder does not exist or holds no matching image, or if ``image_pattern`` is not a regular
        expression or has no ``case_id`` group.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder")
    try:
        regex = re.compile(image_pattern)
    except re.error as err:
        raise InputError(
            f"image pattern (--pattern) {image_pattern!r} is not a regular expression ({err}); fix it"
        ) from None
    if "case_id" not in regex.groupindex:
        raise InputError(
            f"image pattern (--pattern) {image_pattern!r} has no (?P<case_id>...) group; put one around the case id"
        )
    cases = []
    for image in sorted(folder.iterdir()):
        match = regex.match(image.name)
        if not match:
            continue
        case_id = match.group("case_id")
        ext = ".nii.gz" if image.name.endswith(".gz") else ".nii"
        label = folder / f"{case_id}{label_suffix}{ext}"
        mask = folder / f"{case_id}{mask_suffix}{ext}"
        cases.append(Case(case_id, image, label if label.exists() else None, mask if mask.exists() else None))
    if not cases:
        raise InputError(f"{folder}: no image matches {image_pattern!r}; pass --pattern")
    return cases


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A glob pattern as a regex whose groups capture what each wildcard matched (``**/`` spans folders)."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern[i] == "*":
            out.append("([^/]*)")
            i += 1
        elif pattern[i] == "?":
            out.append("([^/])")
            i += 1
        elif pattern[i] == "[":
            end = pattern.find("]", i)
            if end < 0:
                out.append(re.escape(pattern[i]))
                i += 1
            else:
                out.append("(" + pattern[i : end + 1].replace("[!", "[^") + ")")
                i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + "$")


def _name_id(name_regex: re.Pattern[str], name: str) -> str:
    # The stretch of a file name from the first wildcard's match to the last one's ('IBSR_??.nii.gz' -> '01').
    match = name_regex.match(name)
    spans = [match.span(i) for i in range(1, name_regex.groups + 1) if match and match.group(i)] if match else []
    return name[spans[0][0] : spans[-1][1]] if spans else ""


def _matches(pattern: str, what: str) -> dict[str, Path]:
    """Files matching a glob pattern, by case id.

    The case id is the stretch of the file name from the first wildcard's match to the last one's
    (``'imgs/*_T1w.nii.gz'`` names ``sub-01_T1w.nii.gz`` ``'sub-01'``; ``'IBSR_??.nii.gz'`` names
    ``IBSR_01.nii.gz`` ``'01'``); where file names repeat across folders, the folder wildcards' matches
    come first, joined by ``'_'`` (``'data/*/scan.nii.gz'`` names ``data/a/scan.nii.gz`` ``'a'``).
    """
    import glob as globbing

    regex = _pattern_regex(Path(pattern).as_posix())
    files = sorted(p for p in globbing.glob(pattern, recursive=True) if Path(p).is_file())
    if not files:
        raise InputError(f"{what} pattern {pattern!r} matches no file; check the pattern (quote it in the shell)")
    name_regex = _pattern_regex(Path(pattern).name)
    by_id: dict[str, Path] = {}
    for file in files:
        match = regex.match(Path(file).as_posix())
        if match is None:  # pragma: no cover - glob and the regex agree
            continue
        name_id = _name_id(name_regex, Path(file).name)
        folder_groups = [g for g in match.groups()[: len(match.groups()) - name_regex.groups] if g]
        case_id = name_id or "_".join(folder_groups) or Path(file).name
        if case_id in by_id:
            case_id = "_".join(folder_groups + ([name_id] if name_id else []))
        if case_id in by_id:
            raise InputError(
                f"{what} {file} and {by_id[case_id]} give the same case id {case_id!r}; "
                "make the pattern's wildcards cover what tells cases apart"
            )
        by_id[case_id] = Path(file)
    return by_id


def check_same_grid(image: Path, label_map: Path) -> None:
    """Refuse a label map that is not on its image's grid (headers only; no voxel read).

    Shapes must be equal and the voxel-to-world matrices agree within 1e-3. Files nibabel cannot read
    pass (their loading reports them).

    Parameters
    ----------
    image : Path
        The image file.
    label_map : Path
        The label map (or brain mask) file that should share its grid.

    Raises
    ------
    InputError
        Naming both files and both grids (shape and voxel-to-world matrix).
    """
    import nibabel as nib
    import numpy as np

    try:
        a, b = nib.load(str(image)), nib.load(str(label_map))
        grids = [(tuple(x.shape[:3]), np.asarray(x.affine, float)) for x in (a, b)]
    except Exception:  # unreadable files are reported, with the reason, when they are loaded
        return
    (shape_a, affine_a), (shape_b, affine_b) = grids
    if shape_a != shape_b or not np.allclose(affine_a, affine_b, atol=1e-3):

        def describe(shape, affine):
            spacing = np.linalg.norm(affine[:3, :3], axis=0)
            return f"{'x'.join(map(str, shape))} voxels of {' x '.join(f'{s:.3g}' for s in spacing)} mm, origin {np.round(affine[:3, 3], 2).tolist()}"

        raise InputError(
            f"{label_map} ({describe(shape_b, affine_b)}) is not on the grid of its image {image} "
            f"({describe(shape_a, affine_a)}); resample the label map onto the image (nearest neighbour)"
        )


def pair_by_patterns(images: str, labels: str | None = None, masks: str | None = None) -> list[Case]:
    """Cases from glob patterns of images, label maps and masks kept in separate folders.

    The case id is what the wildcards of a pattern matched in the file name
    (``'imgs/*_T1w.nii.gz'`` and ``'labs/*_dseg.nii.gz'`` pair
    ``imgs/sub-01_T1w.nii.gz`` with ``labs/sub-01_dseg.nii.gz`` as case
    ``sub-01``); folder wildcards join in when file names alone repeat.

    Parameters
    ----------
    images : str
        Glob pattern of the images (``**`` spans folders).
    labels, masks : str, optional
        Glob patterns of the label maps and brain masks.

    Returns
    -------
    list of Case
        In case-id order.

    Raises
    ------
    InputError
        If a pattern matches nothing, two files give one case id, a label map
        or mask has no image or an image has no label map (every unmatched file
        is named), or a label map or mask is not on its image's grid.
    """
    found_images = _matches(images, "image")
    found_labels = _matches(labels, "label map") if labels else {}
    found_masks = _matches(masks, "mask") if masks else {}
    unmatched = [str(p) for k, p in {**found_labels, **found_masks}.items() if k not in found_images]
    if labels:
        unmatched += [str(p) for k, p in found_images.items() if k not in found_labels]
    if unmatched:
        raise InputError(
            f"{len(unmatched)} file(s) have no partner with the same case id: {', '.join(sorted(unmatched))}; "
            "fix the patterns or move the files"
        )
    cases = []
    for case_id in sorted(found_images):
        image, label, mask = found_images[case_id], found_labels.get(case_id), found_masks.get(case_id)
        for other in (label, mask):
            if other is not None:
                check_same_grid(image, other)
        cases.append(Case(case_id, image, label, mask))
    return cases


_BIDS_NAME = re.compile(r"^(?P<entities>(?:[a-zA-Z0-9]+-[a-zA-Z0-9]+_)+)(?P<suffix>[a-zA-Z0-9]+)\.nii(?:\.gz)?$")
#: Entities that tell acquisitions apart (a derivative's own ``space``, ``desc``, ``res``, ``label`` are not compared).
_BIDS_KEYS = ("sub", "ses", "task", "acq", "ce", "rec", "run", "echo", "part")


def _bids_entities(name: str) -> tuple[dict[str, str], str] | None:
    match = _BIDS_NAME.match(name)
    if not match:
        return None
    pairs = [e.split("-", 1) for e in match.group("entities").rstrip("_").split("_")]
    return dict(pairs), match.group("suffix")


def scan_bids(root: str | Path, derivatives: str | None = None, suffix: str = "dseg") -> list[Case]:
    """Cases of a BIDS dataset: T1w images and the label maps of a derivatives folder.

    The rule (a small subset of BIDS, no pybids needed): images are
    ``sub-*/[ses-*/]anat/*_T1w.nii[.gz]`` under ``root``; label maps are
    ``*_<suffix>.nii[.gz]`` (default ``dseg``) under
    ``root/derivatives/<derivatives>/`` (every derivatives folder when None),
    in an ``anat`` folder, and belong to the image whose entities ``sub``,
    ``ses``, ``acq``, ``ce``, ``rec``, ``run`` (and ``task``, ``echo``,
    ``part``) they share; their ``space``, ``desc``, ``res`` entities are not
    compared. The case id is the image's entities (``sub-01_ses-1``).
    Images without a label map are listed without one.

    Parameters
    ----------
    root : str or Path
        The BIDS dataset's root folder.
    derivatives : str, optional
        Name of the folder under ``root/derivatives`` holding the label maps; None searches all of
        ``root/derivatives`` (none there: no label maps).
    suffix : str
        BIDS suffix of the label maps.

    Returns
    -------
    list of Case
        In case-id order, without masks.

    Raises
    ------
    InputError
        If ``root`` is not a folder or holds no T1w image, the named derivatives folder does not exist, a
        label map matches no image or a second one for the same image (each such file is named), or is not
        on its image's grid.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: no such folder")
    images = {}
    for path in sorted(root.glob("sub-*/**/anat/*_T1w.nii*")) + sorted(root.glob("sub-*/anat/*_T1w.nii*")):
        parsed = _bids_entities(path.name)
        if parsed is None or "derivatives" in path.relative_to(root).parts:
            continue
        entities = parsed[0]
        key = tuple(entities.get(k) for k in _BIDS_KEYS)
        images[key] = (path, "_".join(f"{k}-{entities[k]}" for k in _BIDS_KEYS if k in entities))
    if not images:
        raise InputError(f"{root}: no sub-*/[ses-*/]anat/*_T1w.nii[.gz] image; is it a BIDS dataset?")
    base = root / "derivatives" / derivatives if derivatives else root / "derivatives"
    if derivatives and not base.is_dir():
        raise InputError(f"{base}: no such derivatives folder")
    labels: dict[tuple, Path] = {}
    unmatched = []
    for path in sorted(base.glob(f"**/anat/*_{suffix}.nii*")) if base.is_dir() else []:
        parsed = _bids_entities(path.name)
        if parsed is None:
            continue
        entities = parsed[0]
        label_key = tuple(entities.get(k) for k in _BIDS_KEYS)
        candidates = [k for k in images if k == label_key]
        if len(candidates) != 1 or candidates[0] in labels:
            unmatched.append(str(path))
            continue
        labels[candidates[0]] = path
    if unmatched:
        raise InputError(
            f"label map(s) that match no single T1w image (or a second one for it): {', '.join(unmatched)}; "
            "give --derivatives NAME or remove the extra files"
        )
    cases = []
    for key, (image, case_id) in sorted(images.items(), key=lambda kv: kv[1][1]):
        label = labels.get(key)
        if label is not None:
            check_same_grid(image, label)
        cases.append(Case(case_id, image, label))
    return cases
