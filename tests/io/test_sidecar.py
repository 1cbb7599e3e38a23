"""JSON sidecars: complete, strictly parsable records; digests; paths; errors."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import torch

from torchqsm.errors import InputError, ParameterError
from torchqsm.io import json_safe, read_sidecar, sidecar_path_for, write_sidecar


@dataclass(frozen=True)
class _Settings:
    threshold: float
    pad: tuple[int, int, int]


def _strict_load(path: Path) -> dict:
    def refuse(constant: str) -> None:
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    field = tmp_path / "field.nii.gz"
    field.write_bytes(b"field bytes" * 100)
    mask = tmp_path / "mask.nii.gz"
    mask.write_bytes(b"\x00\x01" * 77)
    return {"field": field, "mask": mask}


def test_record_is_complete_and_strict_json(tmp_path: Path, inputs: dict[str, Path]) -> None:
    parameters = {
        "threshold": np.float32(0.25),
        "max_iterations": np.int64(30),
        "pad": (8, 8, 8),
        "voxel_size_mm": torch.tensor([0.5, 0.7, 1.2], dtype=torch.float64),
        "b0_dir": np.array([0.0, 0.5, 0.75]),
        "regularization": torch.tensor(1e-3),
        "kernel": torch.zeros(3, 64, 64, 64),
        "weights": np.zeros((2, 10, 10)),
        "template": Path("atlas/chi.nii.gz"),
        "settings": _Settings(threshold=0.19, pad=(1, 2, 3)),
        "tolerance": float("nan"),
        "use_gpu": np.bool_(False),
    }
    before = datetime.now(timezone.utc).replace(microsecond=0)
    path = write_sidecar(
        tmp_path / "derivatives" / "chi.json",
        method="tkd",
        parameters=parameters,
        inputs=inputs,
        outputs={"chi": Path("chi.nii.gz")},
        extra={"BIDSVersion": "1.9.0"},
    )
    assert path == tmp_path / "derivatives" / "chi.json"
    record = _strict_load(path)

    assert set(record) == {
        "Software", "Version", "Method", "Parameters", "Inputs", "Outputs",
        "Created", "Torch", "Python", "Platform", "BIDSVersion",
    }  # fmt: skip
    assert record["Software"] == "torchqsm"
    assert record["Version"] == importlib.metadata.version("torchqsm")
    assert record["Method"] == "tkd"
    assert record["Torch"] == torch.__version__
    assert record["Python"] == platform.python_version()
    assert record["Platform"] == platform.platform()
    assert record["BIDSVersion"] == "1.9.0"
    assert record["Outputs"] == {"chi": "chi.nii.gz"}

    created = datetime.fromisoformat(record["Created"])
    assert created.utcoffset() == timedelta(0)
    assert before <= created <= datetime.now(timezone.utc)

    assert record["Parameters"] == {
        "threshold": 0.25,
        "max_iterations": 30,
        "pad": [8, 8, 8],
        "voxel_size_mm": [0.5, 0.7, 1.2],
        "b0_dir": [0.0, 0.5, 0.75],
        "regularization": pytest.approx(1e-3),
        "kernel": "<tensor 3x64x64x64 float32>",
        "weights": "<array 2x10x10 float64>",
        "template": "atlas/chi.nii.gz",
        "settings": {"threshold": 0.19, "pad": [1, 2, 3]},
        "tolerance": "NaN",
        "use_gpu": False,
    }


def test_inputs_have_absolute_paths_and_correct_digests(
    tmp_path: Path, inputs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = write_sidecar("chi.json", method="tkd", parameters={}, inputs={"field": "field.nii.gz", "mask": inputs["mask"]})
    record = read_sidecar(path)
    for name, file in inputs.items():
        entry = record["Inputs"][name]
        assert entry["path"] == str(file.resolve())
        assert Path(entry["path"]).is_absolute()
        assert entry["sha256"] == hashlib.sha256(file.read_bytes()).hexdigest()


def test_no_overwrite_without_the_flag(tmp_path: Path, inputs: dict[str, Path]) -> None:
    path = write_sidecar(tmp_path / "chi.json", method="tkd", parameters={}, inputs=inputs)
    original = path.read_bytes()
    with pytest.raises(InputError, match="chi.json: the output file exists; pass --overwrite"):
        write_sidecar(path, method="ndi", parameters={}, inputs=inputs)
    assert path.read_bytes() == original
    write_sidecar(path, method="ndi", parameters={}, inputs=inputs, overwrite=True)
    assert read_sidecar(path)["Method"] == "ndi"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chi.json", "field.nii.gz", "mask.nii.gz"]


def test_failed_write_leaves_nothing(tmp_path: Path, inputs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_write_text(self: Path, text: str, *args, **kwargs) -> int:
        with open(self, "w", encoding="utf-8") as stream:
            stream.write(text[:10])
        raise RuntimeError("interrupted")

    monkeypatch.setattr(Path, "write_text", failing_write_text)
    with pytest.raises(RuntimeError, match="interrupted"):
        write_sidecar(tmp_path / "out" / "chi.json", method="tkd", parameters={}, inputs=inputs)
    assert list((tmp_path / "out").iterdir()) == []


def test_missing_input(tmp_path: Path) -> None:
    with pytest.raises(InputError) as caught:
        write_sidecar(tmp_path / "chi.json", method="tkd", parameters={}, inputs={"field": tmp_path / "gone.nii.gz"})
    assert "gone.nii.gz" in str(caught.value)
    assert "field input file does not exist" in str(caught.value)
    assert not (tmp_path / "chi.json").exists()


def test_extra_may_not_replace_reserved_entries(tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match="Method"):
        write_sidecar(tmp_path / "chi.json", method="tkd", parameters={}, inputs={}, extra={"Method": "other"})


@pytest.mark.parametrize(
    ("nifti", "sidecar"),
    [("a/chi.nii.gz", "a/chi.json"), ("chi.nii", "chi.json"), ("sub-01.run-1_T2star.NII.GZ", "sub-01.run-1_T2star.json")],
)
def test_sidecar_path_for(nifti: str, sidecar: str) -> None:
    assert sidecar_path_for(nifti) == Path(sidecar)


@pytest.mark.parametrize("name", ["chi.mgz", ".nii.gz", "chi.nii.gz.bak"])
def test_sidecar_path_for_refuses_other_names(name: str) -> None:
    with pytest.raises(InputError, match="is not a NIfTI file name"):
        sidecar_path_for(name)


def test_read_sidecar_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="absent.json: the sidecar file does not exist"):
        read_sidecar(tmp_path / "absent.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"EchoTime": 0.02,\n  oops}', encoding="utf-8")
    with pytest.raises(InputError, match="broken.json: the sidecar is not valid JSON \\(line 2, column 3"):
        read_sidecar(broken)
    listing = tmp_path / "list.json"
    listing.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(InputError, match="list.json: the sidecar holds a JSON list, not an object"):
        read_sidecar(listing)


def test_json_safe_odd_values() -> None:
    assert json_safe({1: float("inf"), "z": complex(1, -2), "s": {3, 1, 2}}) == {
        "1": "Infinity",
        "z": {"real": 1.0, "imag": -2.0},
        "s": [1, 2, 3],
    }
    assert json_safe(torch.float16) == "float16"
    assert json_safe(np.dtype("int16")) == "int16"
    assert json_safe(np.sum) == "numpy.sum"
    assert json_safe(np.float64(-np.inf)) == "-Infinity"
