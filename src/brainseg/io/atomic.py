"""Atomic file writes (a temporary name beside the target, then rename) and file digests."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_text", "sha256_file"]


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    A reader never sees a partial file, and on error the temporary file is
    removed and ``path`` is left as it was. The file is flushed to disk
    (fsync) before the rename; missing parent folders are created. An ``OSError`` (e.g. disk full) is re-raised
    naming ``path`` rather than the temporary file.

    Parameters
    ----------
    path : str or Path
        Final file.
    suffix : str
        Suffix of the temporary name (libraries such as nibabel choose the
        format from it).

    Yields
    ------
    Path
        The temporary file to write, ``.NAME.<random><suffix>`` in ``path``'s folder (created empty).

    Raises
    ------
    OSError
        If creating, writing, flushing or renaming the file fails, with ``path`` as its file name where the
        error named the temporary file (or no file).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        if err.errno is not None and err.filename in (
            None,
            tmp,
            str(tmp),
        ):  # name the file the user asked for, not the temporary one
            raise type(err)(err.errno, err.strerror, str(path)) from err
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fsync(path: str | Path) -> None:
    """Flush a file or folder to disk, so that a crash after the rename cannot leave an empty file."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on folders
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (newlines as given).

    Parameters
    ----------
    path : str or Path
        The file to write (missing parent folders are created).
    text : str
        Its content, encoded with the locale's default encoding.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    OSError
        As :func:`atomic_path` (e.g. disk full); ``path`` is then left as it was.
    """
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:  # structure names are not all ASCII
            f.write(text)
    return Path(path)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in ``chunk``-byte blocks.

    Parameters
    ----------
    path : str or Path
        The file.
    chunk : int
        Bytes read at a time (default 1 MiB).

    Returns
    -------
    str
        The digest, 64 lowercase hexadecimal digits.

    Raises
    ------
    OSError
        If the file cannot be opened or read.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
