"""Fuzzing the inputs (issue 17): random and mutated NIfTI headers, truncated files and JSON sidecars.

Every example runs the command line in-process and must end in a result (status 0) or one line and a
documented status (2 user error, 3 system, 4 memory): never a traceback (status 70), never a hang
(an alarm fails the example after 60 s), never a stray file in the output folder.
``TORCHQSM_FUZZ_EXAMPLES`` sets the examples per test (default 40; CI keeps it brief).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import struct
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torchqsm.cli.main import main

EXAMPLES = int(os.environ.get("TORCHQSM_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

#: NIfTI-1 header fields worth breaking: (offset, struct format, count).
FIELDS = {
    "dim": (40, "<h", 8), "datatype": (70, "<h", 1), "bitpix": (72, "<h", 1), "pixdim": (76, "<f", 8),
    "vox_offset": (108, "<f", 1), "scl_slope": (112, "<f", 1), "scl_inter": (116, "<f", 1),
    "qform_code": (252, "<h", 1), "sform_code": (254, "<h", 1), "quatern": (256, "<f", 6),
    "srow": (280, "<f", 12), "magic": (344, "4s", 1),
}

_numbers = st.one_of(st.integers(-40000, 40000), st.floats(allow_nan=True, allow_infinity=True, width=32),
                     st.sampled_from([0, 1, -1, 2, 3, 4, 7, 8, 16, 64, 255, 256, 352, 5000, 32767, -32768]))


def _field_and_mask(folder: Path) -> tuple[Path, Path]:
    grid = np.stack(np.meshgrid(*[np.arange(8.0)] * 3, indexing="ij")) - 3.5
    mask = (np.sqrt((grid**2).sum(0)) < 3.2).astype(np.float32)
    field = (0.02 * grid[0] * grid[2] / 10 * mask).astype(np.float32)
    affine = np.diag([1.0, 1.0, 1.5, 1.0])
    for name, data in (("field.nii", field), ("mask.nii", mask)):
        nib.save(nib.Nifti1Image(data, affine), folder / name)
    return folder / "field.nii", folder / "mask.nii"


@contextlib.contextmanager
def _alarm(seconds: int):
    def hang(*_):
        raise AssertionError(f"no answer within {seconds} s: a hang")
    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _check(argv: list[str], out: Path) -> int:
    err = io.StringIO()
    with _alarm(60), contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    text = err.getvalue()
    assert "Traceback" not in text and code != 70, text
    assert code in (0, 2, 3, 4), (code, text)
    if code != 0:
        assert text.count("\n") == 1, text
        assert not out.exists() or list(out.iterdir()) == [], sorted(p.name for p in out.iterdir())
    return code


def _mutate(data: bytes, changes) -> bytes:
    block = bytearray(data)
    for name, index, value in changes:
        offset, form, count = FIELDS[name]
        size = struct.calcsize(form)
        position = offset + (index % count) * size
        try:
            packed = struct.pack(form, value if form != "4s" else str(value).encode()[:4])
        except (struct.error, OverflowError, TypeError):
            continue
        block[position:position + size] = packed
    return bytes(block)


@FUZZ
@given(changes=st.lists(st.tuples(st.sampled_from(sorted(FIELDS)), st.integers(0, 11), _numbers), min_size=1,
                        max_size=4),
       cut=st.one_of(st.none(), st.integers(0, 3000)), which=st.sampled_from(["field", "mask"]))
def test_mutated_headers_end_in_one_line_or_a_result(changes, cut, which):
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        field, mask = _field_and_mask(folder)
        target = field if which == "field" else mask
        data = _mutate(target.read_bytes(), changes)
        target.write_bytes(data if cut is None else data[:cut])
        out = folder / "out"
        _check(["invert", str(field), str(mask), "-o", str(out / "chi.nii.gz"), "--quiet"], out)


@FUZZ
@given(junk=st.binary(min_size=0, max_size=600), keep=st.integers(0, 400))
def test_random_bytes_after_a_real_header_prefix(junk, keep):
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        field, mask = _field_and_mask(folder)
        field.write_bytes(field.read_bytes()[:keep] + junk)
        out = folder / "out"
        _check(["invert", str(field), str(mask), "-o", str(out / "chi.nii.gz"), "--quiet"], out)


_json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**6, 10**6),
              st.text(max_size=8)),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8)


@settings(FUZZ, max_examples=max(5, EXAMPLES // 4))
@given(echo_time=_json_values, field_strength=_json_values, garbage=st.one_of(st.none(), st.text(max_size=40)))
def test_random_sidecars_end_in_one_line_or_a_result(echo_time, field_strength, garbage):
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        field, mask = _field_and_mask(folder)
        sidecar = folder / "field.json"
        if garbage is not None:
            sidecar.write_text(garbage)
        else:
            sidecar.write_text(json.dumps({"EchoTime": echo_time, "MagneticFieldStrength": field_strength}))
        out = folder / "out"
        # medi reads the echo times and field strength from the sidecar; ndi too: the sidecar matters.
        _check(["invert", str(field), str(mask), "-o", str(out / "chi.nii.gz"), "--method", "ndi",
                "--param", "max_iterations=2", "--quiet"], out)


@pytest.mark.slow
@settings(FUZZ, max_examples=10 * EXAMPLES)
@given(changes=st.lists(st.tuples(st.sampled_from(sorted(FIELDS)), st.integers(0, 11), _numbers), min_size=1,
                        max_size=8))
def test_mutated_headers_long_run(changes):
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        field, mask = _field_and_mask(folder)
        field.write_bytes(_mutate(field.read_bytes(), changes))
        out = folder / "out"
        _check(["invert", str(field), str(mask), "-o", str(out / "chi.nii.gz"), "--quiet"], out)
