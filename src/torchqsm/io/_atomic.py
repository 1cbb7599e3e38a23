"""Atomic, no-clobber file writing shared by the NIfTI and JSON writers.

A file is written under a temporary name in its final folder and moved into
place only once complete, so a crash or an error never leaves a half-written
output, and an existing file is replaced only when the caller asks for it.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path

from torchqsm.errors import InputError

__all__ = ["check_output_path", "check_writable_folder", "write_atomically"]


def check_writable_folder(folder: str | os.PathLike[str], *, what: str = "output folder") -> Path:
    """Refuse, before any computation, a folder that cannot be created or written to.

    The nearest existing ancestor must be a folder in which a file can be created: one is
    created and removed at once (``os.access`` says yes to root even on a read-only file
    system). Nothing is created when the check fails, and missing folders are not created.

    Raises
    ------
    InputError
        ``folder`` (or an ancestor) is a file, or no file can be created there.
    """
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == folder else f"cannot be created: {existing} is a file"
        raise InputError(f"the {what} {where}, not a folder", source=str(folder))
    try:
        descriptor, probe = _probe(existing)
        os.close(descriptor)
        os.unlink(probe)
    except OSError as error:
        reason = error.strerror or str(error)
        raise InputError(f"the {what} is not writable ({existing}: {reason})", source=str(folder)) from None
    return folder


def _probe(folder: Path) -> tuple[int, Path]:
    probe = folder / f".torchqsm-probe-{secrets.token_hex(4)}"
    return os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), probe


def check_output_path(path: str | os.PathLike[str], *, overwrite: bool) -> Path:
    """Refuse an output path that exists (unless ``overwrite``) or is a folder."""
    path = Path(path)
    if path.is_dir():
        raise InputError("the output path is a folder, not a file", source=str(path))
    if path.exists() and not overwrite:
        raise InputError("the output file exists; pass --overwrite to replace it", source=str(path))
    return path


def _temporary_path(path: Path) -> Path:
    """Create an empty, new file beside ``path`` named ``.tmp-<random>-<name>``.

    The same extension keeps format detection by name (``.nii.gz`` → gzip);
    the leading dot hides the file from most listings while it is written.
    """
    for _ in range(100):
        candidate = path.with_name(f".tmp-{secrets.token_hex(4)}-{path.name}")
        try:
            # O_EXCL: never reuse another writer's file; 0o666 honours the umask.
            descriptor = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(descriptor)
        return candidate
    raise InputError("cannot create a temporary file in the output folder", source=str(path))


def _commit(temporary: Path, path: Path, *, overwrite: bool) -> None:
    """Move the finished temporary file to ``path``."""
    if overwrite:
        os.replace(temporary, path)
        return
    # A hard link fails if ``path`` appeared meanwhile, so we never clobber a
    # file written by someone else after the first existence check.
    try:
        os.link(temporary, path)
    except FileExistsError:
        raise InputError(
            "the output file exists; pass --overwrite to replace it", source=str(path)
        ) from None
    except OSError:
        # Some file systems have no hard links: fall back to check-then-replace.
        check_output_path(path, overwrite=False)
        os.replace(temporary, path)
        return
    temporary.unlink()


def write_atomically(
    path: str | os.PathLike[str], write: Callable[[Path], None], *, overwrite: bool = False
) -> Path:
    """Call ``write(temporary_path)`` and move the result to ``path`` atomically.

    Parameters
    ----------
    path
        Final file name. Missing parent folders are created.
    write
        Writes the complete file at the path it is given.
    overwrite
        Replace ``path`` if it exists; otherwise an existing file is an error.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    InputError
        ``path`` exists and ``overwrite`` is false, ``path`` is a folder, or the
        folder cannot be created or written to. On any error the temporary
        file is removed and ``path`` is left as it was.
    """
    path = check_output_path(path, overwrite=overwrite)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = _temporary_path(path)
    except OSError as error:
        raise InputError(
            f"cannot create the output file: {error.strerror or error}", source=str(path)
        ) from error
    try:
        write(temporary)
        _commit(temporary, path, overwrite=overwrite)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise InputError(
            f"cannot write the output file: {error.strerror or error}", source=str(path)
        ) from error
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path
