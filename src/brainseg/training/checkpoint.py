"""Training checkpoints: weights, optimiser state and progress (loadable with ``weights_only=True``).

And what a checkpoint may be resumed with: its settings, and its file settings by content.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path
from typing import Any

import torch

from brainseg.config import PATH_SETTINGS, Config, config_to_dict
from brainseg.errors import InputError
from brainseg.io.atomic import atomic_path, sha256_file

__all__ = [
    "LATER_SETTINGS",
    "RESUMABLE_CHANGES",
    "check_resumable",
    "content_digest",
    "load_checkpoint",
    "path_digests",
    "resume_settings",
    "save_checkpoint",
]


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write a checkpoint atomically (temp file + rename).

    ``state`` may hold tensors, state dicts and plain Python values only, so
    that :func:`load_checkpoint` never needs to unpickle arbitrary objects.

    Parameters
    ----------
    path : str or Path
        The checkpoint file (replaced if it exists; missing parent folders are created).
    state : dict of str to object
        What the trainer keeps: the network's and optimiser's state dicts, progress, and the
        :func:`resume_settings` and :func:`path_digests` it may be resumed with.
    """
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)``: tensors and plain values only, no code runs.

    Parameters
    ----------
    path : str or Path
        A file written by :func:`save_checkpoint`.

    Returns
    -------
    dict of str to object
        The saved state, tensors on the CPU; it holds at least ``'network'``.

    Raises
    ------
    InputError
        If the file is not such a checkpoint (a pickle of other objects, which
        is refused unexecuted, or a truncated or foreign file).
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, AttributeError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(
            f"{path}: not a brainseg training checkpoint ({first[:160]}); "
            "it was not loaded (brainseg never unpickles objects): delete it and train without --resume"
        ) from None
    if not isinstance(state, dict) or "network" not in state:
        raise InputError(f"{path}: not a brainseg training checkpoint; delete it and train without --resume")
    return state


#: Settings a resumed run may change: how long it runs, on how many threads, in which arithmetic (a run
#: begun in float32 on a CPU may go on in bfloat16 on a GPU).
RESUMABLE_CHANGES = ("epochs", "num_threads", "stop_min_gain", "stop_epochs", "precision")
#: Training settings added after checkpoints recorded their settings, with their defaults: left out of
#: :func:`resume_settings` while at them, so that a checkpoint written before they existed stays resumable.
LATER_SETTINGS: dict[str, object] = {"nesterov": False, "lr_milestones": []}


def resume_settings(config: Config) -> str:
    """The configuration a checkpoint belongs to, as canonical JSON (a plain string: loads with weights_only).

    Leaves out the CRF settings (inference only), :data:`RESUMABLE_CHANGES`, and
    :data:`LATER_SETTINGS` at their defaults.

    Parameters
    ----------
    config : Config
        The run's configuration.

    Returns
    -------
    str
        JSON with sorted keys (values JSON cannot hold written with ``str``).
    """
    values = config_to_dict(config)
    values.pop("crf", None)  # an inference setting: checkpoints written before it existed stay resumable
    for key in RESUMABLE_CHANGES:
        values["training"].pop(key, None)
    for key, default in LATER_SETTINGS.items():
        if values["training"].get(key) == default:
            values["training"].pop(key)
    return json.dumps(values, sort_keys=True, default=str)


def content_digest(value: str) -> str | None:
    """SHA-256 over the contents of a file, or of every file of a folder with its relative path.

    Parameters
    ----------
    value : str
        A path, as a path setting holds it.

    Returns
    -------
    str or None
        Hex digest; None when ``value`` names no existing file or folder (e.g. ``labels: auto``).
    """
    path = Path(value) if value else None
    if path is None or not path.exists():
        return None
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{f.relative_to(path).as_posix()}\0{sha256_file(f)}\n".encode())
    return digest.hexdigest()


def path_digests(config: Config) -> dict[str, str | None]:
    """:func:`content_digest` of each of the config's :data:`~brainseg.config.PATH_SETTINGS`.

    Parameters
    ----------
    config : Config
        The run's configuration; its ``training`` section holds the path settings.

    Returns
    -------
    dict of str to (str or None)
        Setting name -> hex SHA-256 of the file's or folder's contents; None where the setting names no
        existing file or folder.
    """
    values = config_to_dict(config)["training"]
    return {key: content_digest(str(values.get(key) or "")) for key in PATH_SETTINGS}


def check_resumable(state: dict, settings: str, digests: dict[str, str | None], path: Path) -> None:
    """Refuse to resume a checkpoint written for other settings, naming them.

    Parameters
    ----------
    state : dict
        From :func:`load_checkpoint`.
    settings, digests
        :func:`resume_settings` and :func:`path_digests` of the config the run resumes with.
    path : Path
        The checkpoint, for the message.

    Raises
    ------
    InputError
        If the checkpoint records no configuration, or settings other than :data:`RESUMABLE_CHANGES`
        changed (a file or folder setting only when its contents changed).
    """
    saved = state.get("settings")
    if saved is None:
        raise InputError(f"{path}: this checkpoint records no configuration; start a new run in another folder")
    old, new = json.loads(saved), json.loads(settings)
    # checkpoints written before digests were kept: the old path's contents, where it still exists
    saved_digests = state.get("digests") or {
        key: content_digest(str(old["training"].get(key) or "")) for key in PATH_SETTINGS
    }

    def differs(section: str, key: str) -> bool:
        before, after = old.get(section, {}).get(key), new.get(section, {}).get(key)
        if section == "training" and key in PATH_SETTINGS:
            a, b = saved_digests.get(key), digests.get(key)
            if a is not None and b is not None:
                return a != b  # a file or folder: its contents decide, wherever it lies
        return before != after

    changed = sorted(
        f"{section}.{key}"
        for section in set(old) | set(new)
        for key in set(old.get(section, {})) | set(new.get(section, {}))
        if differs(section, key)
    )
    if changed:
        raise InputError(
            f"{path}: was trained with other settings ({', '.join(changed)}); resume with the same config "
            f"(only {', '.join(RESUMABLE_CHANGES)} may change; files and folders may move if their "
            "contents stay) or train into another folder"
        )
