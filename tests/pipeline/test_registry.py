"""The method registry: every method by name, parameter checking, types in = types out, metadata, coercion."""

from __future__ import annotations

import inspect
import typing

import numpy as np
import pytest
import torch

import torchqsm
from torchqsm import inversion
from torchqsm.errors import ParameterError, TorchQSMError
from torchqsm.metrics import nrmse
from torchqsm.physics import tilt_b0_dir
from torchqsm.pipeline import registry
from torchqsm.pipeline.registry import METHODS, MethodSpec, ParameterSpec, coerce_parameter, get_method, register
from torchqsm.simulate import forward_field, shapes_phantom

EXPECTED = {"tkd", "tsvd", "tikhonov", "l2", "tv", "ndi", "medi", "cosmos"}
SHAPE = (16, 16, 16)
DIRECTIONS = ((0.0, 0.0, 1.0), tilt_b0_dir(30.0, about=0), tilt_b0_dir(30.0, about=1))

#: Small iteration counts: the point is reaching each method, not converging.
FAST = {
    "tkd": {}, "tsvd": {}, "tikhonov": {}, "cosmos": {},
    "l2": {"max_iterations": 5},
    "tv": {"max_iterations": 5},
    "ndi": {"max_iterations": 5},
    "medi": {"max_iterations": 2, "cg_max_iterations": 5},
}


@pytest.fixture(scope="module")
def problem() -> dict[str, torch.Tensor]:
    chi, mask = shapes_phantom(SHAPE, dtype=torch.float64)
    field = forward_field(chi, pad=8)
    fields = torch.stack([forward_field(chi, b0_dir=d, pad=8) for d in DIRECTIONS])
    return {"chi": chi, "mask": mask, "field": field, "fields": fields, "magnitude": mask.double() + 0.5}


def _arguments(name: str, problem: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    params = {"pad": 8, **FAST[name]}
    if name == "cosmos":
        return problem["fields"], {**params, "b0_dir": DIRECTIONS}
    if name == "medi":
        params["magnitude"] = problem["magnitude"]
    return problem["field"], params


#: Learned methods (and their refinements) are exercised in test_learned.py.
CLASSICAL = sorted(name for name, spec in METHODS.items() if spec.kind == "classical")


def test_registry_holds_every_method() -> None:
    assert set(METHODS) >= EXPECTED
    assert set(FAST) == set(CLASSICAL), "a new method needs fast settings here"
    assert torchqsm.METHODS is METHODS


@pytest.mark.parametrize("name", CLASSICAL)
def test_invert_reaches_every_method_by_name(name: str, problem) -> None:
    field, params = _arguments(name, problem)
    chi = torchqsm.invert(field, problem["mask"], name, **params)

    assert isinstance(chi, torch.Tensor)
    assert chi.shape == SHAPE and chi.dtype == torch.float64
    assert torch.isfinite(chi).all()
    assert torch.all(chi[~problem["mask"]] == 0)
    assert float(chi.abs().max()) > 0
    assert nrmse(chi, problem["chi"], problem["mask"]) < 100.0  # better than χ = 0, even after a few iterations
    # The registry adds nothing: the same numbers as the method's own function.
    torch.testing.assert_close(chi, getattr(inversion, name)(field, problem["mask"], **params))


def test_geometry_reaches_the_method(problem) -> None:
    kwargs = {"voxel_size_mm": (1.0, 1.0, 1.5), "b0_dir": (0.0, 0.3, 1.0), "threshold": 0.15, "pad": 8}
    through_registry = torchqsm.invert(problem["field"], problem["mask"], "tkd", **kwargs)
    torch.testing.assert_close(through_registry, inversion.tkd(problem["field"], problem["mask"], **kwargs))
    default = torchqsm.invert(problem["field"], problem["mask"], "tkd", threshold=0.15, pad=8)
    assert not torch.allclose(through_registry, default)


def test_default_method_is_tkd(problem) -> None:
    torch.testing.assert_close(torchqsm.invert(problem["field"], problem["mask"]),
                               inversion.tkd(problem["field"], problem["mask"]))


# --------------------------------------------------------------------------- errors


def test_unknown_method_raises_parameter_error_naming_it(problem) -> None:
    with pytest.raises(ParameterError, match=r"unknown method 'qsmnet9' \(known: .*tkd") as info:
        torchqsm.invert(problem["field"], problem["mask"], "qsmnet9")
    assert isinstance(info.value, TorchQSMError) and isinstance(info.value, ValueError)
    with pytest.raises(ParameterError, match="qsmnet9"):
        get_method("qsmnet9")


@pytest.mark.parametrize(("name", "parameter"), [("tkd", "lambda"), ("tkd", "max_iterations"), ("l2", "threshold"),
                                                 ("cosmos", "magnitude"), ("tkd", "voxel_size")])
def test_unknown_parameter_raises_parameter_error_naming_it(name: str, parameter: str, problem) -> None:
    with pytest.raises(ParameterError, match=f"method '{name}' has no parameter '{parameter}'"):
        torchqsm.invert(problem["field"], problem["mask"], name, **{parameter: 1})


@pytest.mark.parametrize(("name", "parameter", "value"), [
    ("l2", "max_iterations", -1), ("l2", "max_iterations", 2.5), ("l2", "max_iterations", True),
    ("tv", "max_iterations", -1), ("ndi", "max_iterations", -1),
    ("l2", "tolerance", float("nan")), ("l2", "tolerance", -1e-3), ("l2", "tolerance", "small"),
    ("medi", "cg_max_iterations", -1), ("medi", "cg_tolerance", -1.0),
])
def test_loop_parameters_are_checked_for_every_method(name: str, parameter: str, value, problem) -> None:
    field, params = _arguments(name, problem)
    params[parameter] = value
    with pytest.raises(ParameterError, match=f"parameter '{parameter}'"):
        torchqsm.invert(field, problem["mask"], name, **params)


def test_zero_iterations_and_numpy_integers_are_accepted(problem) -> None:
    for count in (0, np.int64(2)):
        chi = torchqsm.invert(problem["field"], problem["mask"], "l2", max_iterations=count, pad=8)
        assert torch.isfinite(chi).all()


def test_medi_without_magnitude_is_a_user_error(problem) -> None:
    assert get_method("medi").needs_magnitude
    assert not any(get_method(n).needs_magnitude for n in METHODS if n != "medi")
    with pytest.raises(TorchQSMError, match="magnitude"):
        torchqsm.invert(problem["field"], problem["mask"], "medi", pad=8, max_iterations=1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is available")
def test_cuda_without_gpu_is_a_parameter_error(problem) -> None:
    with pytest.raises(ParameterError, match="cuda"):
        torchqsm.invert(problem["field"], problem["mask"], "tkd", device="cuda")


# --------------------------------------------------------------------------- types in = types out


def test_numpy_in_numpy_out(problem) -> None:
    field = problem["field"].float().numpy()
    mask = problem["mask"].numpy()
    chi = torchqsm.invert(field, mask, "tkd", pad=8)
    assert isinstance(chi, np.ndarray)
    assert chi.shape == SHAPE and chi.dtype == np.float32
    np.testing.assert_allclose(chi, torchqsm.invert(torch.from_numpy(field), problem["mask"], "tkd", pad=8).numpy())


def test_numpy_in_numpy_out_with_numpy_magnitude(problem) -> None:
    chi = torchqsm.invert(problem["field"].numpy(), problem["mask"].numpy(), "medi",
                          magnitude=problem["magnitude"].numpy(), pad=8, **FAST["medi"])
    assert isinstance(chi, np.ndarray) and chi.dtype == np.float64


def test_numpy_in_numpy_out_for_cosmos(problem) -> None:
    chi = torchqsm.invert(problem["fields"].numpy(), problem["mask"].numpy(), "cosmos", b0_dir=DIRECTIONS, pad=8)
    assert isinstance(chi, np.ndarray) and chi.shape == SHAPE


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_in_torch_out(dtype: torch.dtype, problem) -> None:
    chi = torchqsm.invert(problem["field"].to(dtype), problem["mask"], "tikhonov", pad=8)
    assert isinstance(chi, torch.Tensor)
    assert chi.dtype == dtype and chi.device == problem["field"].device


def test_device_argument_returns_to_the_input_device(problem) -> None:
    chi = torchqsm.invert(problem["field"], problem["mask"], "tkd", device="cpu", pad=8)
    assert isinstance(chi, torch.Tensor) and chi.device.type == "cpu"


# --------------------------------------------------------------------------- metadata


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_is_documented(name: str) -> None:
    spec = get_method(name)
    assert isinstance(spec, MethodSpec) and spec.name == name
    assert spec.summary and spec.summary == spec.summary.strip() and "\n" not in spec.summary
    assert spec.references, f"{name} has no references"
    assert any("doi" in reference.lower() for reference in spec.references), spec.references
    assert spec.parameters, f"{name} has no parameters"
    for parameter in spec.parameters:
        assert parameter.description.strip(), f"{name}.{parameter.name} has no description"
        assert parameter.name not in registry.SHARED
        assert "``" not in parameter.description and ":math:" not in parameter.description


@pytest.mark.parametrize("name", sorted(METHODS))
def test_parameters_match_the_signature(name: str) -> None:
    spec = get_method(name)
    signature = inspect.signature(spec.function)
    expected = [n for n, p in signature.parameters.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY and n not in registry.SHARED]
    assert [p.name for p in spec.parameters] == expected
    for parameter in spec.parameters:
        assert parameter.default == signature.parameters[parameter.name].default


def test_type_names() -> None:
    tkd, tikhonov, l2 = get_method("tkd"), get_method("tikhonov"), get_method("l2")
    assert tkd.parameter("threshold").type_name == "float"
    assert tkd.parameter("correct_bias").type_name == "bool"
    assert l2.parameter("max_iterations").type_name == "int"
    assert l2.parameter("magnitude").type_name == "image"
    assert tikhonov.parameter("regularizer").type_name == "identity|gradient"
    assert get_method("cosmos").multi_orientation and not tkd.multi_orientation
    assert all(get_method(n).kind == "classical" for n in EXPECTED)


def test_register_a_new_method(monkeypatch, problem) -> None:
    monkeypatch.setattr(registry, "METHODS", dict(METHODS))

    def halve(local_field_ppm: torch.Tensor, mask: torch.Tensor, *, voxel_size_mm=(1.0, 1.0, 1.0),
              b0_dir=(0.0, 0.0, 1.0), scale: float = 0.5,
              mode: typing.Literal["a", "b"] = "a") -> torch.Tensor:
        """Half the field.

        Parameters
        ----------
        scale
            Factor (dimensionless).
        mode
            Unused.

        References
        ----------
        Nobody N. A test. J Tests 2024;1:1. doi:10.0000/test
        """
        return local_field_ppm * scale * mask

    spec = register("halve", halve)
    assert registry.METHODS["halve"] is spec
    assert [p.name for p in spec.parameters] == ["scale", "mode"]
    assert spec.parameter("scale").description == "Factor (dimensionless)."
    assert spec.parameter("mode").type_name == "a|b"
    assert spec.summary == "Half the field."
    assert spec.references == ["Nobody N. A test. J Tests 2024;1:1. doi:10.0000/test"]
    chi = registry.invert(problem["field"], problem["mask"], "halve", scale=2.0)
    torch.testing.assert_close(chi, problem["field"] * 2.0 * problem["mask"])
    assert "halve" not in METHODS  # the real registry is untouched


@pytest.mark.parametrize("bad", ["TKD", "two words", "", "ünïcode", "a/b"])
def test_register_refuses_bad_names(bad: str) -> None:
    with pytest.raises(ValueError, match="lower-case"):
        register(bad, inversion.tkd)


# --------------------------------------------------------------------------- coerce_parameter


def _spec(name: str, default, annotation=typing.Any) -> ParameterSpec:
    return ParameterSpec(name, default, annotation, "test")


@pytest.mark.parametrize(("spec", "text", "expected"), [
    (_spec("threshold", 0.19), "0.15", 0.15),
    (_spec("threshold", 0.19), " 1e-3 ", 1e-3),
    (_spec("threshold", 0.19), "2", 2.0),
    (_spec("max_iterations", 100), "5", 5),
    (_spec("max_iterations", 100), "0", 0),
    (_spec("correct_bias", False), "true", True),
    (_spec("correct_bias", False), "True", True),
    (_spec("correct_bias", False), "yes", True),
    (_spec("correct_bias", False), "on", True),
    (_spec("correct_bias", False), "1", True),
    (_spec("correct_bias", True), "false", False),
    (_spec("correct_bias", True), "No", False),
    (_spec("correct_bias", True), "off", False),
    (_spec("correct_bias", True), "0", False),
    (_spec("regularizer", "gradient", typing.Literal["identity", "gradient"]), "identity", "identity"),
    (_spec("pad", (16, 16, 16)), "8", 8),
    (_spec("pad", (16, 16, 16)), "8,8,4", (8, 8, 4)),
    (_spec("pad", (16, 16, 16)), "8, 8, 4", (8, 8, 4)),
    (_spec("gradient_penalty", None), "0.05", 0.05),
    (_spec("gradient_penalty", None), "none", None),
    (_spec("gradient_penalty", None), "None", None),
    (_spec("label", "x"), "anything", "anything"),
])
def test_coerce_parameter(spec: ParameterSpec, text: str, expected) -> None:
    value = coerce_parameter(spec, text)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(("spec", "text", "words"), [
    (_spec("threshold", 0.19), "abc", ["'threshold'", "a float", "'abc'"]),
    (_spec("threshold", 0.19), "", ["'threshold'"]),
    (_spec("max_iterations", 100), "2.5", ["'max_iterations'", "an int", "'2.5'"]),
    (_spec("max_iterations", 100), "-1", ["'max_iterations'", "non-negative"]),
    (_spec("cg_max_iterations", 100), "-1", ["'cg_max_iterations'", "non-negative"]),
    (_spec("tolerance", 1e-3), "nan", ["'tolerance'", "non-negative"]),
    (_spec("tolerance", 1e-3), "-0.1", ["'tolerance'", "non-negative"]),
    (_spec("correct_bias", False), "maybe", ["'correct_bias'", "a bool", "'maybe'"]),
    (_spec("correct_bias", False), "2", ["'correct_bias'", "bool"]),
    (_spec("regularizer", "gradient", typing.Literal["identity", "gradient"]), "Identity",
     ["'regularizer'", "identity, gradient", "'Identity'"]),
    (_spec("pad", (16, 16, 16)), "eight", ["'pad'", "'eight'"]),
    (_spec("pad", (16, 16, 16)), "8,,8", ["'pad'"]),
])
def test_coerce_parameter_rejects(spec: ParameterSpec, text: str, words: list[str]) -> None:
    with pytest.raises(ParameterError) as info:
        coerce_parameter(spec, text)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message, (word, message)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_coerce_every_real_parameter_from_its_default(name: str) -> None:
    for parameter in get_method(name).parameters:
        if parameter.name in registry.IMAGE_PARAMETERS or parameter.default is None:
            continue
        default = parameter.default
        text = ",".join(map(str, default)) if isinstance(default, tuple) else str(default)
        assert coerce_parameter(parameter, text) == default, parameter.name
