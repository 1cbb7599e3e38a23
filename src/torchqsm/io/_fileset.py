"""Replacing a set of output files all at once, and recovering after a crash.

A run writes its files into a hidden staging folder beside their destination
(:func:`staging_folder`), then :func:`commit` moves them into place. The move is
journalled: before the first file moves, ``journal.json`` (written atomically)
lists every target and whether a previous file was there; each previous file is
moved into the staging folder's ``previous/`` before its replacement moves in,
the finish mark (the last file, e.g. χ's sidecar) first out and last in, so a
half-replaced set never carries a finish mark. When every file is in place the
journal is marked ``committed`` and the staging folder removed.

An error or interrupt during the moves rolls back at once (previous files
restored, new ones removed). A process killed outright (SIGKILL, power loss)
leaves its staging folder behind; :func:`recover` — run by the next run in that
folder — rolls an uncommitted set back (or finishes removing a committed one)
and deletes staging folders whose process is gone. So the folder holds the
previous complete result, the new complete result, or nothing; never a mix.

Staging folders are named ``.torchqsm-staging-<host>-<pid>-<random>``: hidden,
never a result, and only ever removed by this host once their process is dead.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = ["STAGING_PREFIX", "staging_folder", "commit", "recover"]

STAGING_PREFIX = ".torchqsm-staging-"
#: A staging folder of another host is left alone unless it is older than this (s).
_FOREIGN_AGE_S = 7 * 24 * 3600


def _host() -> str:
    return "".join(c if c.isalnum() else "_" for c in socket.gethostname())[:40] or "host"


def staging_folder(parent: Path) -> Path:
    """Create ``parent/.torchqsm-staging-<host>-<pid>-<random>/`` (and ``parent``)."""
    parent.mkdir(parents=True, exist_ok=True)
    folder = parent / f"{STAGING_PREFIX}{_host()}-{os.getpid()}-{secrets.token_hex(4)}"
    folder.mkdir()
    return folder


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT/SIGTERM while files move (delivered right after): an interrupt never splits the set."""
    held = {signal.SIGINT, signal.SIGTERM}
    try:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    except (AttributeError, ValueError, OSError):  # not POSIX
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _write_journal(staging: Path, record: dict) -> None:
    temporary = staging / "journal.json.tmp"
    temporary.write_text(json.dumps(record), encoding="utf-8")
    os.replace(temporary, staging / "journal.json")


def _roll_back(staging: Path, entries: Sequence[dict]) -> None:
    """Undo a partial swap: new files out of the way, previous files back (in reverse order)."""
    for entry in reversed(entries):
        target, staged = Path(entry["target"]), staging / "new" / entry["name"]
        backup = staging / "previous" / entry["name"]
        if not staged.exists() and target.exists() and (backup.exists() or not entry["existed"]):
            target.unlink()  # the new file had moved in
        if backup.exists():
            os.replace(backup, target)


def commit(staging: Path, targets: dict[Path, Path]) -> None:
    """Move ``staged → target`` for every item of ``targets`` (staged files under ``staging/new/``),
    as one set; the last item is the finish mark. On any error or interrupt the previous files are
    restored before the exception propagates. ``staging`` is removed afterwards in every case."""
    (staging / "previous").mkdir(exist_ok=True)
    items = list(targets.items())
    entries = [{"name": staged.name, "target": str(target), "existed": target.exists()} for staged, target in items]
    try:
        with _signals_held():
            _write_journal(staging, {"state": "swapping", "entries": entries})
            try:
                mark = entries[-1]
                if mark["existed"]:  # the old finish mark goes first: a mixed set is never "finished"
                    os.replace(mark["target"], staging / "previous" / mark["name"])
                for (staged, target), entry in zip(items, entries):
                    if entry["existed"] and entry is not mark:
                        os.replace(target, staging / "previous" / entry["name"])
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(staged, target)
            except BaseException:
                _roll_back(staging, entries)
                raise
            _write_journal(staging, {"state": "committed", "entries": entries})
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _owner_alive(folder: Path) -> bool:
    """Whether the process that made ``folder`` may still be writing to it."""
    parts = folder.name[len(STAGING_PREFIX):].rsplit("-", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return False  # not ours to keep (an older naming): stale
    host, pid = parts[0], int(parts[1])
    if host != _host():
        try:
            return time.time() - folder.stat().st_mtime < _FOREIGN_AGE_S
        except OSError:
            return True
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def recover(parent: Path) -> list[str]:
    """Clean the staging folders of dead runs in ``parent``: roll back an uncommitted swap, remove the rest.

    Returns one line per folder handled (for the log). Missing ``parent``: nothing to do.
    """
    done: list[str] = []
    try:
        candidates = [p for p in Path(parent).iterdir() if p.name.startswith(STAGING_PREFIX) and p.is_dir()]
    except OSError:
        return done
    for folder in candidates:
        if _owner_alive(folder):
            continue
        journal = folder / "journal.json"
        try:
            record = json.loads(journal.read_text(encoding="utf-8")) if journal.exists() else None
        except (OSError, ValueError):
            record = None
        if record is not None and record.get("state") == "swapping":
            _roll_back(folder, record["entries"])
            done.append(f"rolled back an interrupted replacement of outputs in {parent} (previous results kept)")
        else:
            done.append(f"removed the staging folder {folder.name} of an interrupted run")
        shutil.rmtree(folder, ignore_errors=True)
    return done
