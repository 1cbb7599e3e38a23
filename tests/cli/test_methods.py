"""``torchqsm methods``: every registered method with its parameters, defaults and a reference."""

from __future__ import annotations

import json

import pytest

from torchqsm.pipeline.registry import METHODS, coerce_parameter

EXPECTED = ("cosmos", "l2", "medi", "ndi", "tikhonov", "tkd", "tsvd", "tv")


def test_registry_holds_the_expected_methods() -> None:
    assert set(EXPECTED) <= set(METHODS)


def test_text_lists_every_method_with_parameters_and_a_reference(cli) -> None:
    result = cli("methods")
    assert result.code == 0 and result.err == ""
    blocks = {block.split()[0]: block for block in result.out.strip().split("\n\n")}
    assert sorted(blocks) == sorted(METHODS)
    for name, spec in METHODS.items():
        block = blocks[name]
        assert spec.summary in block
        for parameter in spec.specs:
            assert f"--param {parameter.name}=" in block, (name, parameter.name)
        references = [line for line in block.splitlines() if line.strip().startswith("ref:")]
        assert len(references) == 1 and "doi" in references[0].lower(), name
    assert "several orientations" in blocks["cosmos"].splitlines()[0]


def test_one_method_as_text(cli) -> None:
    result = cli("methods", "tikhonov")
    assert result.code == 0
    assert result.out.startswith("tikhonov  (classical)")
    assert "--param regularizer=identity" in result.out and "identity|gradient" in result.out
    assert "\n\n" not in result.out.strip()  # one block only


def test_one_method_as_json(cli) -> None:
    result = cli("methods", "tkd", "--json")
    assert result.code == 0 and result.err == ""
    (entry,) = json.loads(result.out)
    assert entry["name"] == "tkd"
    assert entry["kind"] == "classical"
    assert entry["multi_orientation"] is False
    assert entry["summary"] == METHODS["tkd"].summary
    parameters = {p["name"]: p for p in entry["parameters"]}
    assert list(parameters) == ["pad", "kernel_form", "threshold", "correct_bias"]
    assert parameters["threshold"]["default"] == "0.19"
    assert parameters["threshold"]["type"] == "float"
    assert parameters["pad"]["default"] is None  # the acquisition's padding
    assert parameters["kernel_form"]["type"] == "kspace|image"
    assert parameters["threshold"]["bounds"] == "positive and at most 0.666667"
    assert parameters["correct_bias"]["type"] == "bool"
    assert all(p["description"] for p in entry["parameters"])
    assert entry["references"] and all("doi" in r.lower() for r in entry["references"])


def test_all_methods_as_json(cli) -> None:
    result = cli("methods", "--json")
    entries = json.loads(result.out)
    assert [e["name"] for e in entries] == sorted(METHODS)
    assert {e["name"]: e["multi_orientation"] for e in entries}["cosmos"] is True


@pytest.mark.parametrize("name", sorted(METHODS))
def test_listed_defaults_are_valid_param_values(name: str, cli) -> None:
    """What `methods` shows as a default, typed back as --param, gives the default itself."""
    (entry,) = json.loads(cli("methods", name, "--json").out)
    for listed, spec in zip(entry["parameters"], METHODS[name].specs, strict=True):
        if spec.image:
            continue
        shown = "none" if listed["default"] is None else listed["default"]
        assert coerce_parameter(spec, shown) == spec.default, (name, spec.name, shown)


def test_unknown_method(cli, one_line_error) -> None:
    one_line_error(cli("methods", "qsmnet9"), "qsmnet9", "unknown method", "tkd")


def test_methods_say_what_of_the_acquisition_they_need(cli) -> None:
    (ndi,) = json.loads(cli("methods", "ndi", "--json").out)
    (tkd,) = json.loads(cli("methods", "tkd", "--json").out)
    assert ndi["needs"] == ["b0_tesla", "echo_times_s"] and tkd["needs"] == []
    assert "needs the field strength and echo times" in cli("methods", "medi").out
