"""Find GRE runs in a BIDS dataset.

Discovery (:func:`discover_gre`) scans ``sub-*/anat/`` and ``sub-*/ses-*/anat/``
for gradient-echo images with the suffix ``MEGRE`` or ``T2starw``
(``.nii`` or ``.nii.gz``), e.g.::

    sub-01/ses-1/anat/sub-01_ses-1_acq-qsm_run-1_echo-2_part-phase_MEGRE.nii.gz

Files that differ only in ``echo`` and ``part`` form one run; its echoes are
sorted by echo number and magnitude (``part-mag``, or no ``part``) is paired
with phase (``part-phase``). A run may also be one file per part holding
every echo (4-D, no ``echo`` entity). Magnitude-only runs are skipped: QSM
needs the phase.

Where the outputs go is :mod:`torchqsm.io.derivatives`.

References
----------
Gorgolewski KJ et al. The brain imaging data structure, a format for
organizing and describing outputs of neuroimaging experiments. Sci Data
2016;3:160044. https://doi.org/10.1038/sdata.2016.44
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from torchqsm.errors import InputError

__all__ = ["GreRun", "discover_gre", "GRE_SUFFIXES"]

#: BIDS suffixes of gradient-echo images that can carry phase.
GRE_SUFFIXES = ("MEGRE", "T2starw")

_ENTITY = re.compile(r"^([a-zA-Z0-9]+)-([a-zA-Z0-9]+)$")
_NIFTI_EXTENSIONS = (".nii.gz", ".nii")
_MAGNITUDE_PARTS = ("mag", None)  # no part entity means magnitude in BIDS


@dataclass(frozen=True)
class GreRun:
    """One GRE run: its echoes' magnitude and phase files, in echo order.

    Attributes
    ----------
    subject
        Participant label, without ``sub-``.
    session
        Session label without ``ses-``, or ``None``.
    entities
        The other entities of the file names (e.g. ``{"acq": "qsm", "run": "1"}``),
        in file-name order; ``echo`` and ``part`` are not among them.
    suffix
        ``"MEGRE"`` or ``"T2starw"``.
    magnitude_files, phase_files
        One file per echo, sorted by echo number, or one file holding every echo.
    key
        ``sub-<label>[_ses-<label>][_<entity>-<value>...]``, the stem of every derivative.
    """

    subject: str
    session: str | None
    entities: dict[str, str]
    suffix: str
    magnitude_files: tuple[Path, ...]
    phase_files: tuple[Path, ...]
    key: str


def _parse(name: str) -> tuple[dict[str, str], str] | None:
    """``sub-1_echo-2_MEGRE.nii.gz`` → ``({"sub": "1", "echo": "2"}, "MEGRE")``; None if not GRE."""
    extension = next((ext for ext in _NIFTI_EXTENSIONS if name.endswith(ext)), None)
    if extension is None or name.startswith("."):
        return None
    *pairs, suffix = name[: -len(extension)].split("_")
    entities = {}
    for pair in pairs:
        match = _ENTITY.match(pair)
        if match is None or match[1] in entities:
            return None
        entities[match[1]] = match[2]
    return (entities, suffix) if pairs and suffix in GRE_SUFFIXES else None


def _labels(given: str | Sequence[str] | None, prefix: str) -> list[str] | None:
    if given is None:
        return None
    values = [given] if isinstance(given, str) else list(given)
    return [str(value).removeprefix(prefix) for value in values]


def _anat_folders(bids_dir: Path, subjects: list[str] | None, sessions: list[str] | None):
    """``(subject, session, anat folder)`` for every selected subject and session."""
    subject_dirs = {
        p.name.removeprefix("sub-"): p for p in sorted(bids_dir.glob("sub-*")) if p.is_dir()
    }
    if not subject_dirs:
        raise InputError("no sub-* folders: this is not a BIDS dataset", source=str(bids_dir))
    for label in subjects or []:
        if label not in subject_dirs:
            raise InputError(
                f"participant sub-{label} not found; the dataset has "
                + ", ".join(f"sub-{s}" for s in subject_dirs),
                source=str(bids_dir),
            )
    chosen = [(label, subject_dirs[label]) for label in (subjects or subject_dirs)]
    folders, sessions_seen = [], set()
    for subject, subject_dir in chosen:
        if sessions is None:
            folders.append((subject, None, subject_dir / "anat"))
        for session_dir in sorted(subject_dir.glob("ses-*")):
            session = session_dir.name.removeprefix("ses-")
            sessions_seen.add(session)
            if sessions is None or session in sessions:
                folders.append((subject, session, session_dir / "anat"))
    missing = sorted(set(sessions or []) - sessions_seen)
    if missing:
        raise InputError(
            f"session ses-{missing[0]} not found for the chosen participants", source=str(bids_dir)
        )
    return [(subject, session, anat) for subject, session, anat in folders if anat.is_dir()]


def _echo_number(value: str | None, path: Path) -> int | None:
    if value is None:
        return None
    if not value.isdigit():
        raise InputError(f"the echo entity must be a number, got echo-{value}", source=str(path))
    return int(value)


def _files_in_echo_order(
    files: dict[int | None, list[Path]], key: str, part: str
) -> tuple[Path, ...]:
    for echo, paths in files.items():
        if len(paths) > 1:
            names = " and ".join(p.name for p in paths)
            raise InputError(
                f"two {part} files for echo {echo} of run {key}: {names}",
                source=str(paths[0].parent),
            )
    if None in files and len(files) > 1:
        raise InputError(
            f"run {key} mixes {part} files with and without an echo entity",
            source=str(files[None][0].parent),
        )
    return tuple(files[echo][0] for echo in sorted(files, key=lambda echo: echo or 0))


def _runs_in(subject: str, session: str | None, anat: Path) -> tuple[list[GreRun], int]:
    """The runs in one anat folder, and how many magnitude-only runs were skipped."""
    groups: dict[tuple, dict[str, dict[int | None, list[Path]]]] = {}
    for path in sorted(anat.iterdir()):
        parsed = _parse(path.name)
        if parsed is None or parsed[0].get("sub") != subject or parsed[0].get("ses") != session:
            continue
        entities, suffix = parsed
        part = entities.pop("part", None)
        kind = "magnitude" if part in _MAGNITUDE_PARTS else "phase" if part == "phase" else None
        if kind is None:  # real/imaginary parts are not used
            continue
        echo = _echo_number(entities.pop("echo", None), path)
        group = groups.setdefault((tuple(entities.items()), suffix), {"magnitude": {}, "phase": {}})
        group[kind].setdefault(echo, []).append(path)

    runs, magnitude_only, keys = [], 0, {}
    for (entity_items, suffix), parts in groups.items():
        key = "_".join(f"{name}-{value}" for name, value in entity_items)
        if not parts["phase"]:
            magnitude_only += 1
            continue
        if not parts["magnitude"]:
            raise InputError(
                f"run {key} ({suffix}) has phase but no magnitude files", source=str(anat)
            )
        if set(parts["magnitude"]) != set(parts["phase"]):
            magnitude_echoes = sorted(e or 0 for e in parts["magnitude"])
            phase_echoes = sorted(e or 0 for e in parts["phase"])
            raise InputError(
                f"run {key} ({suffix}) has magnitude echoes {magnitude_echoes} "
                f"but phase echoes {phase_echoes}",
                source=str(anat),
            )
        if key in keys:
            raise InputError(
                f"runs {keys[key]} and {suffix} share the name {key}", source=str(anat)
            )
        keys[key] = suffix
        runs.append(
            GreRun(
                subject=subject,
                session=session,
                entities={
                    name: value for name, value in entity_items if name not in ("sub", "ses")
                },
                suffix=suffix,
                magnitude_files=_files_in_echo_order(parts["magnitude"], key, "magnitude"),
                phase_files=_files_in_echo_order(parts["phase"], key, "phase"),
                key=key,
            )
        )
    return runs, magnitude_only


def discover_gre(
    bids_dir: str | os.PathLike[str],
    *,
    participant_labels: str | Sequence[str] | None = None,
    sessions: str | Sequence[str] | None = None,
) -> list[GreRun]:
    """Find every GRE run with magnitude and phase in a BIDS dataset.

    Parameters
    ----------
    bids_dir
        The dataset's root folder (holding ``sub-*`` folders).
    participant_labels
        Only these participants (``"01"`` or ``"sub-01"``); default all.
    sessions
        Only these sessions (``"1"`` or ``"ses-1"``); default all, including
        data outside any session folder.

    Returns
    -------
    list of GreRun
        Sorted by subject, session and run key.

    Raises
    ------
    InputError
        ``bids_dir`` is missing, has no ``dataset_description.json`` or no ``sub-*`` folders; a participant or
        session is not found; no GRE run with phase is found; a run's
        magnitude and phase echoes do not pair up, or an echo has two files.

    Examples
    --------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> anat = root / "sub-01" / "anat"
    >>> anat.mkdir(parents=True)
    >>> _ = (root / "dataset_description.json").write_text('{"Name": "demo", "BIDSVersion": "1.8.0"}')
    >>> for name in ("sub-01_echo-1_part-mag_MEGRE.nii", "sub-01_echo-1_part-phase_MEGRE.nii"):
    ...     _ = (anat / name).write_bytes(b"")
    >>> [(run.key, run.phase_files[0].name) for run in discover_gre(root)]
    [('sub-01', 'sub-01_echo-1_part-phase_MEGRE.nii')]
    """
    bids_dir = Path(bids_dir)
    if not bids_dir.is_dir():
        problem = "is a file, not a folder" if bids_dir.exists() else "does not exist"
        raise InputError(f"the BIDS folder {problem}", source=str(bids_dir))
    if not (bids_dir / "dataset_description.json").is_file():
        raise InputError("not a BIDS dataset: the folder has no dataset_description.json (BIDS requires one at "
                         "the root; is this the dataset's root folder?)", source=str(bids_dir))
    subjects, session_labels = _labels(participant_labels, "sub-"), _labels(sessions, "ses-")
    runs, magnitude_only = [], 0
    for subject, session, anat in _anat_folders(bids_dir, subjects, session_labels):
        found, skipped = _runs_in(subject, session, anat)
        runs += found
        magnitude_only += skipped
    if not runs:
        hint = (
            f" ({magnitude_only} magnitude-only run(s) without part-phase files)"
            if magnitude_only
            else ""
        )
        raise InputError(
            f"no GRE run with phase found in sub-*/[ses-*/]anat/ (*_part-phase_MEGRE or "
            f"*_part-phase_T2starw .nii[.gz]){hint}",
            source=str(bids_dir),
        )
    return sorted(runs, key=lambda run: (run.subject, run.session or "", run.key))
