"""The method registry: every method by name, parameter checking, types in = types out, metadata, coercion."""

from __future__ import annotations

import dataclasses
import inspect
import typing

import numpy as np
import pytest
import torch

import torchqsm
from torchqsm import inversion
from torchqsm.acquisition import Acquisition
from torchqsm.errors import ParameterError, TorchQSMError
from torchqsm.metrics import nrmse
from torchqsm.physics import tilt_b0_dir
from torchqsm.pipeline import registry
from torchqsm.pipeline.registry import METHODS, MethodSpec, ParameterSpec, coerce_parameter, get_method, register
from torchqsm.pipeline.specs import Parameters, param
from torchqsm.simulate import forward_field, shapes_phantom

EXPECTED = {"tkd", "tsvd", "tikhonov", "l2", "tv", "ndi", "medi", "cosmos"}
SHAPE = (16, 16, 16)
DIRECTIONS = ((0.0, 0.0, 1.0), tilt_b0_dir(30.0, about=0), tilt_b0_dir(30.0, about=1))
#: 3 T, TE 4-12 ms: what the nonlinear data terms (tv nonlinear, ndi, medi) need.
AXIAL = Acquisition(voxel_size_mm=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0), b0_tesla=3.0,
                    echo_times_s=(0.004, 0.008, 0.012))

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


def _arguments(name: str, problem: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Acquisition, dict]:
    params = {"pad": 8, **FAST[name]}
    if name == "cosmos":
        return problem["fields"], Acquisition(voxel_size_mm=(1.0, 1.0, 1.0), b0_dir=DIRECTIONS), params
    if name == "medi":
        params["magnitude"] = problem["magnitude"]
    return problem["field"], AXIAL, params


#: Learned methods (and their refinements) are exercised in test_learned.py.
CLASSICAL = sorted(name for name, spec in METHODS.items() if spec.kind == "classical")


def test_registry_holds_every_method() -> None:
    assert set(METHODS) >= EXPECTED
    assert set(FAST) == set(CLASSICAL), "a new method needs fast settings here"
    assert torchqsm.METHODS is METHODS


@pytest.mark.parametrize("name", CLASSICAL)
def test_invert_reaches_every_method_by_name(name: str, problem) -> None:
    field, acquisition, params = _arguments(name, problem)
    chi = torchqsm.invert(field, problem["mask"], name, acquisition, **params)

    assert isinstance(chi, torch.Tensor)
    assert chi.shape == SHAPE and chi.dtype == torch.float64
    assert torch.isfinite(chi).all()
    assert torch.all(chi[~problem["mask"]] == 0)
    assert float(chi.abs().max()) > 0
    assert nrmse(chi, problem["chi"], problem["mask"]) < 100.0  # better than χ = 0, even after a few iterations
    # The registry adds nothing: the same numbers as the method's own function.
    torch.testing.assert_close(chi, getattr(inversion, name)(field, problem["mask"], acquisition, **params))


def test_geometry_reaches_the_method(problem) -> None:
    kwargs = {"voxel_size_mm": (1.0, 1.0, 1.5), "b0_dir": (0.0, 0.3, 1.0), "threshold": 0.15, "pad": 8}
    through_registry = torchqsm.invert(problem["field"], problem["mask"], "tkd", **kwargs)
    torch.testing.assert_close(through_registry, inversion.tkd(problem["field"], problem["mask"], **kwargs))
    default = torchqsm.invert(problem["field"], problem["mask"], "tkd", AXIAL, threshold=0.15, pad=8)
    assert not torch.allclose(through_registry, default)
    overridden = torchqsm.invert(problem["field"], problem["mask"], "tkd", AXIAL, threshold=0.15, pad=8,
                                 voxel_size_mm=(1.0, 1.0, 1.5), b0_dir=(0.0, 0.3, 1.0))
    torch.testing.assert_close(overridden, through_registry)


def test_default_method_is_tkd(problem) -> None:
    torch.testing.assert_close(torchqsm.invert(problem["field"], problem["mask"], acquisition=AXIAL),
                               inversion.tkd(problem["field"], problem["mask"], AXIAL))


@pytest.mark.parametrize("missing", [{}, {"voxel_size_mm": (1.0, 1.0, 1.0)}, {"b0_dir": (0.0, 0.0, 1.0)}])
def test_no_geometry_is_one_clear_error(missing, problem) -> None:
    """No silent 1 mm / axial: without a record, the voxel size and B0 direction are required."""
    with pytest.raises(ParameterError, match="tv needs the (voxel size|B0 direction)") as info:
        torchqsm.invert(problem["field"], problem["mask"], "tv", **missing)
    assert "\n" not in str(info.value) and "acquisition_from_nifti" in str(info.value)


def test_acquisition_from_a_nifti_path(problem, tmp_path) -> None:
    from torchqsm.io import save_nifti

    path = save_nifti(tmp_path / "field.nii.gz", problem["field"].numpy(), affine=np.diag([1.0, 1.0, 1.5, 1.0]))
    chi = torchqsm.invert(problem["field"], problem["mask"], "tv", path, pad=8, max_iterations=3)
    expected = inversion.tv(problem["field"], problem["mask"], voxel_size_mm=(1.0, 1.0, 1.5), b0_dir=(0, 0, 1),
                            pad=8, max_iterations=3)
    torch.testing.assert_close(chi, expected)
    assert torch.isfinite(torchqsm.invert(problem["field"], problem["mask"], "tv", str(path), max_iterations=2)).all()


@pytest.mark.parametrize("name", ["ndi", "medi"])
def test_nonlinear_methods_refuse_a_record_without_te_and_field_strength(name, problem) -> None:
    geometry = Acquisition(voxel_size_mm=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0))
    with pytest.raises(ParameterError, match="field strength and echo times"):
        torchqsm.invert(problem["field"], problem["mask"], name, geometry, magnitude=problem["magnitude"],
                        max_iterations=1)


# --------------------------------------------------------------------------- errors


def test_unknown_method_raises_parameter_error_naming_it(problem) -> None:
    with pytest.raises(ParameterError, match=r"unknown method 'qsmnet9' \(known: .*tkd") as info:
        torchqsm.invert(problem["field"], problem["mask"], "qsmnet9", AXIAL)
    assert isinstance(info.value, TorchQSMError) and isinstance(info.value, ValueError)
    with pytest.raises(ParameterError, match="qsmnet9"):
        get_method("qsmnet9")


@pytest.mark.parametrize(("name", "parameter"), [("tkd", "lambda"), ("tkd", "max_iterations"), ("l2", "threshold"),
                                                 ("cosmos", "magnitude"), ("tkd", "voxel_size")])
def test_unknown_parameter_raises_parameter_error_naming_it(name: str, parameter: str, problem) -> None:
    with pytest.raises(ParameterError, match=f"method '{name}' has no parameter '{parameter}'"):
        torchqsm.invert(problem["field"], problem["mask"], name, AXIAL, **{parameter: 1})


@pytest.mark.parametrize(("name", "parameter", "value"), [
    ("l2", "max_iterations", -1), ("l2", "max_iterations", 2.5), ("l2", "max_iterations", True),
    ("tv", "max_iterations", -1), ("ndi", "max_iterations", -1),
    ("l2", "tolerance", float("nan")), ("l2", "tolerance", -1e-3), ("l2", "tolerance", "small"),
    ("medi", "cg_max_iterations", -1), ("medi", "cg_tolerance", -1.0),
])
def test_loop_parameters_are_checked_for_every_method(name: str, parameter: str, value, problem) -> None:
    field, acquisition, params = _arguments(name, problem)
    params[parameter] = value
    with pytest.raises(ParameterError, match=f"parameter '{parameter}'"):
        torchqsm.invert(field, problem["mask"], name, acquisition, **params)


def test_zero_iterations_and_numpy_integers_are_accepted(problem) -> None:
    for count in (0, np.int64(2)):
        chi = torchqsm.invert(problem["field"], problem["mask"], "l2", AXIAL, max_iterations=count, pad=8)
        assert torch.isfinite(chi).all()


def test_medi_without_magnitude_is_a_user_error(problem) -> None:
    assert get_method("medi").needs_magnitude
    assert not any(get_method(n).needs_magnitude for n in METHODS if n != "medi")
    with pytest.raises(TorchQSMError, match="magnitude"):
        torchqsm.invert(problem["field"], problem["mask"], "medi", AXIAL, pad=8, max_iterations=1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is available")
def test_cuda_without_gpu_is_a_parameter_error(problem) -> None:
    with pytest.raises(ParameterError, match="cuda"):
        torchqsm.invert(problem["field"], problem["mask"], "tkd", AXIAL, device="cuda")


# --------------------------------------------------------------------------- types in = types out


def test_numpy_in_numpy_out(problem) -> None:
    field = problem["field"].float().numpy()
    mask = problem["mask"].numpy()
    chi = torchqsm.invert(field, mask, "tkd", AXIAL, pad=8)
    assert isinstance(chi, np.ndarray)
    assert chi.shape == SHAPE and chi.dtype == np.float32
    np.testing.assert_allclose(chi, torchqsm.invert(torch.from_numpy(field), problem["mask"], "tkd", AXIAL, pad=8).numpy())


def test_numpy_in_numpy_out_with_numpy_magnitude(problem) -> None:
    chi = torchqsm.invert(problem["field"].numpy(), problem["mask"].numpy(), "medi", AXIAL,
                          magnitude=problem["magnitude"].numpy(), pad=8, **FAST["medi"])
    assert isinstance(chi, np.ndarray) and chi.dtype == np.float64


def test_numpy_in_numpy_out_for_cosmos(problem) -> None:
    chi = torchqsm.invert(problem["fields"].numpy(), problem["mask"].numpy(), "cosmos", voxel_size_mm=(1, 1, 1),
                          b0_dir=DIRECTIONS, pad=8)
    assert isinstance(chi, np.ndarray) and chi.shape == SHAPE


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_in_torch_out(dtype: torch.dtype, problem) -> None:
    chi = torchqsm.invert(problem["field"].to(dtype), problem["mask"], "tikhonov", AXIAL, pad=8)
    assert isinstance(chi, torch.Tensor)
    assert chi.dtype == dtype and chi.device == problem["field"].device


def test_device_argument_returns_to_the_input_device(problem) -> None:
    chi = torchqsm.invert(problem["field"], problem["mask"], "tkd", AXIAL, device="cpu", pad=8)
    assert isinstance(chi, torch.Tensor) and chi.device.type == "cpu"


# --------------------------------------------------------------------------- metadata


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_is_documented(name: str) -> None:
    spec = get_method(name)
    assert isinstance(spec, MethodSpec) and spec.name == name
    assert spec.summary and spec.summary == spec.summary.strip() and "\n" not in spec.summary
    assert spec.references, f"{name} has no references"
    assert any("doi" in reference.lower() for reference in spec.references), spec.references
    assert issubclass(spec.parameters, Parameters) and spec.specs, f"{name} has no parameters"
    for parameter in spec.specs:
        assert parameter.description.strip(), f"{name}.{parameter.name} has no description"
        assert parameter.name not in ("local_field_ppm", "mask", "voxel_size_mm", "b0_dir", "callback")
        assert "``" not in parameter.description and ":math:" not in parameter.description


#: Keyword parameters of the functions that are geometry (the record's), not method parameters.
_GEOMETRY = ("voxel_size_mm", "b0_dir", "callback")


@pytest.mark.parametrize("name", CLASSICAL)
def test_parameter_record_matches_the_function(name: str) -> None:
    """The record lists every keyword of the function, with the same defaults: called directly or by name, alike."""
    spec = get_method(name)
    signature = inspect.signature(spec.function)
    expected = [n for n, p in signature.parameters.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY and n not in _GEOMETRY]
    assert sorted(spec.parameters.names()) == sorted(expected)
    for parameter in spec.specs:
        default = signature.parameters[parameter.name].default
        if parameter.required:
            assert default is None, parameter.name  # declared optional in Python, refused there when missing
        else:
            assert parameter.default == default, parameter.name
    assert spec.progress == ("callback" in signature.parameters)


def test_type_names() -> None:
    tkd, tikhonov, l2 = get_method("tkd"), get_method("tikhonov"), get_method("l2")
    assert tkd.parameter("threshold").type_name == "float"
    assert tkd.parameter("correct_bias").type_name == "bool"
    assert l2.parameter("max_iterations").type_name == "int"
    assert l2.parameter("magnitude").type_name == "image"
    assert tikhonov.parameter("regularizer").type_name == "identity|gradient"
    assert get_method("cosmos").multi_orientation and not tkd.multi_orientation
    assert all(get_method(n).kind == "classical" for n in EXPECTED)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _HalveParameters(Parameters):
    scale: float = param(0.5, gt=0, description="factor (dimensionless)")
    mode: typing.Literal["a", "b"] = param("a", description="unused")


def test_register_a_new_method(monkeypatch, problem) -> None:
    monkeypatch.setattr(registry.METHODS, "_classical", dict(registry.METHODS._classical))
    seen = []

    def halve(local_field_ppm: torch.Tensor, mask: torch.Tensor, acquisition: Acquisition, *, scale: float,
              mode: str) -> torch.Tensor:
        seen.append(acquisition)
        return local_field_ppm * scale * mask

    spec = register("halve", halve, _HalveParameters, summary="Half the field.",
                    references=("Nobody N. A test. J Tests 2024;1:1. doi:10.0000/test",))
    assert registry.METHODS["halve"] is spec
    assert spec.parameters.names() == ("scale", "mode")
    assert spec.parameter("scale").description == "factor (dimensionless)"
    assert spec.parameter("mode").type_name == "a|b"
    chi = registry.invert(problem["field"], problem["mask"], "halve", AXIAL, scale=2.0)
    torch.testing.assert_close(chi, problem["field"] * 2.0 * problem["mask"])
    assert seen == [AXIAL]
    with pytest.raises(ParameterError, match="parameter 'scale' must be positive"):
        registry.invert(problem["field"], problem["mask"], "halve", AXIAL, scale=-2.0)
    monkeypatch.undo()
    assert "halve" not in METHODS  # the real registry is untouched


@pytest.mark.parametrize("bad", ["TKD", "two words", "", "ünïcode", "a/b"])
def test_register_refuses_bad_names(bad: str) -> None:
    with pytest.raises(ValueError, match="lower-case"):
        register(bad, inversion.tkd, _HalveParameters, summary="x")


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
    (_spec("pad", (16, 16, 16)), "8", (8, 8, 8)),
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
    for parameter in get_method(name).specs:
        if parameter.image or parameter.default is None:
            continue
        default = parameter.default
        text = ",".join(map(str, default)) if isinstance(default, tuple) else str(default)
        assert coerce_parameter(parameter, text) == default, parameter.name
