r"""The parameter records of the dipole inversions and refinements: one frozen dataclass each.

Every record derives from :class:`InversionParameters`, which holds the two parameters all
methods share (``pad`` and ``kernel_form``, None: the acquisition record's). The registry
(:mod:`torchqsm.pipeline.registry`) pairs each record with its function; ``torchqsm
methods``, ``--param`` coercion and the sidecar are derived from it. The defaults equal the
functions' own keyword defaults (``tests/pipeline/test_methods.py`` checks every one), so a
method called from Python directly and through :func:`torchqsm.invert` runs alike.

>>> TKDParameters(threshold=0.1).threshold
0.1
>>> [s.name for s in NDIParameters.specs()][:4]
['pad', 'kernel_form', 'regularization', 'magnitude']
>>> NDIParameters.NEEDS
('b0_tesla', 'echo_times_s')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ..refine.dfqsm import DEFAULT_TOLERANCE
from .specs import Parameters, param

__all__ = ["InversionParameters", "TKDParameters", "TSVDParameters", "TikhonovParameters", "L2Parameters",
           "TVParameters", "NDIParameters", "MEDIParameters", "COSMOSParameters", "DFQSMParameters",
           "DLL2Parameters", "FINEParameters"]

_MAGNITUDE = "magnitude image for the data weights (CLI: --magnitude FILE)"


@dataclass(frozen=True, kw_only=True)
class InversionParameters(Parameters):
    """The parameters every method shares: the padding and form of the record's dipole kernel."""

    pad: int | tuple[int, int, int] | None = param(
        None, unit="voxels", description="zero padding per side: one integer or X,Y,Z; none: the acquisition's (16)")
    kernel_form: Literal["kspace", "image"] | None = param(
        None, description="dipole kernel: analytic in k-space, or the FFT of the image-space dipole; "
                          "none: the acquisition's (kspace)")


@dataclass(frozen=True, kw_only=True)
class TKDParameters(InversionParameters):
    threshold: float = param(0.19, gt=0, le=2 / 3, description="truncation level t of |D| (dimensionless)")
    correct_bias: bool = param(False, description="divide by the truncation bias factor")


@dataclass(frozen=True, kw_only=True)
class TSVDParameters(InversionParameters):
    threshold: float = param(0.05, gt=0, le=2 / 3, description="|D| below which k-space is set to zero")


@dataclass(frozen=True, kw_only=True)
class TikhonovParameters(InversionParameters):
    regularization: float | Literal["auto"] = param(
        "auto", gt=0, description="lambda (dimensionless for identity, mm² for gradient); auto: generalized "
                                  "cross-validation")
    regularizer: Literal["identity", "gradient"] = param("identity", description="the penalised quantity")


@dataclass(frozen=True, kw_only=True)
class L2Parameters(InversionParameters):
    regularization: float | Literal["auto"] = param(
        "auto", ge=0, unit="mm²", description="lambda of the gradient penalty; 0: none; auto: generalized "
                                             "cross-validation")
    magnitude: Any = param(None, image=True, description=_MAGNITUDE)
    support: bool = param(True, description="constrain χ to the mask")
    max_iterations: int = param(100, description="CG iteration limit")
    tolerance: float = param(3e-4, description="CG relative residual at which to stop")


@dataclass(frozen=True, kw_only=True)
class TVParameters(InversionParameters):
    regularization: float | Literal["auto"] = param(
        "auto", gt=0, unit="ppm·mm", description="alpha, weight of the TV term; auto: scaled to the field noise")
    noise_ppm: float | None = param(None, gt=0, unit="ppm", description="field noise for auto; none: estimated "
                                                                       "from the data")
    magnitude: Any = param(None, image=True, description=_MAGNITUDE)
    nonlinear: bool = param(False, description="nonlinear data term (needs TE and field strength)")
    gradient_penalty: float | None = param(None, gt=0, description="ADMM mu_1; none: 100 alpha (FANSI's choice)")
    data_penalty: float = param(1.0, gt=0, description="ADMM mu_2 of the nonlinear data term")
    max_iterations: int = param(100, description="ADMM iteration limit")
    tolerance: float = param(1e-3, description="relative update of χ at which to stop")

    def acquisition_needs(self) -> tuple[str, ...]:
        return ("b0_tesla", "echo_times_s") if self.nonlinear else ()


@dataclass(frozen=True, kw_only=True)
class NDIParameters(InversionParameters):
    NEEDS = ("b0_tesla", "echo_times_s")

    regularization: float = param(1e-4, ge=0, description="lambda of the Tikhonov term (dimensionless)")
    magnitude: Any = param(None, image=True, description=_MAGNITUDE)
    support: bool = param(True, description="constrain χ to the mask")
    step_size: float = param(4.0, gt=0, description="gradient step tau")
    max_iterations: int = param(300, description="iteration limit")
    tolerance: float | Literal["auto"] = param(
        "auto", ge=0, description="relative update of χ at which to stop; auto: discrepancy principle (the "
                                  "residual reaches the noise)")
    noise_ppm: float | None = param(None, gt=0, unit="ppm", description="field noise for auto; none: estimated "
                                                                       "from the data")


@dataclass(frozen=True, kw_only=True)
class MEDIParameters(InversionParameters):
    NEEDS = ("b0_tesla", "echo_times_s")

    magnitude: Any = param(None, image=True, required=True,
                           description="magnitude image: edges and data weights (CLI: --magnitude FILE)")
    support: bool = param(True, description="constrain χ to the mask")
    regularization: float | Literal["auto"] = param(
        "auto", gt=0, unit="1/(ppm·mm)", description="lambda, data weight against TV; auto: 1/(kappa sigma h), "
                                                    "the tv rule")
    noise_ppm: float | None = param(None, gt=0, unit="ppm", description="field noise for auto; none: estimated "
                                                                       "from the data")
    edge_fraction: float = param(0.1, ge=0, lt=1, description="fraction of gradient components treated as edges")
    smoothing: float = param(1e-6, gt=0, unit="ppm²/mm²", description="epsilon of the lagged-diffusivity weight")
    max_iterations: int = param(10, description="Gauss-Newton iteration limit")
    tolerance: float = param(0.1, description="relative update at which Gauss-Newton stops")
    cg_max_iterations: int = param(100, description="iteration limit of each inner CG solve")
    cg_tolerance: float = param(0.01, description="relative residual of each inner CG solve")


@dataclass(frozen=True, kw_only=True)
class COSMOSParameters(InversionParameters):
    regularization: float = param(1e-6, gt=0, description="epsilon guarding the k-space division")
    solver: Literal["cg", "kspace"] = param("cg", description="CG on the padded grid, or one k-space division")
    max_iterations: int = param(30, description="CG iteration limit")
    tolerance: float = param(3e-4, description="CG relative residual at which to stop")


@dataclass(frozen=True, kw_only=True)
class DFQSMParameters(InversionParameters):
    step_size: float = param(1.0, gt=0, description="gradient step alpha (dimensionless)")
    tolerance: float | Literal["auto"] = param(
        "auto", ge=0, description=f"relative gradient norm at which to stop (the paper's rule: {DEFAULT_TOLERANCE}); "
                                  "auto: discrepancy principle (the residual reaches the noise)")
    noise_ppm: float | None = param(None, gt=0, unit="ppm", description="field noise for auto; none: estimated "
                                                                       "from the data")
    max_iterations: int = param(200, description="iteration limit")
    support: bool = param(True, description="constrain χ to the mask")


@dataclass(frozen=True, kw_only=True)
class DLL2Parameters(InversionParameters):
    regularization: float | Literal["auto"] = param(
        "auto", gt=0, description="lambda, pull towards the network's χ (dimensionless); auto: generalized "
                                  "cross-validation")
    weighting: Literal["identity", "mask"] = param("identity", description="closed form, or CG inside the mask")
    magnitude: Any = param(None, image=True, description=_MAGNITUDE + "; needs weighting=mask")
    max_iterations: int = param(100, description="CG iteration limit")
    tolerance: float = param(1e-4, description="CG relative residual at which to stop")


@dataclass(frozen=True, kw_only=True)
class FINEParameters(InversionParameters):
    magnitude: Any = param(None, image=True, description=_MAGNITUDE)
    learning_rate: float = param(1e-4, gt=0, description="Adam step")
    max_iterations: int = param(100, description="number of Adam steps (0: the network's own χ)")
