r"""Projection onto dipole fields (PDF).

The background field is modelled as the field of dipole sources outside the
mask: PDF fits a susceptibility :math:`\chi_b` on the complement of the mask
(in a zero-padded field of view, so sources may also lie beyond the image)
whose field matches the total field inside the mask, and keeps the residual
as the local field. Local sources near the mask edge whose field looks like
that of outside sources are partly absorbed into the background.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ...errors import InputError, ParameterError
from ...physics import DipoleOp, padding_for
from ...physics.kernels import KernelForm
from ...solvers import StatusCallback, cg
from ...validation import check_magnitude
from ._common import BackgroundResult, check_loop, prepare

__all__ = ["pdf"]

Vector3 = Sequence[float]


def _pad_amounts(pad) -> tuple[int, int, int]:
    if isinstance(pad, int) and not isinstance(pad, bool):
        pad = (pad, pad, pad)
    try:
        values = tuple(int(p) for p in pad)
        exact = len(values) == 3 and all(float(p) == float(q) for p, q in zip(values, pad))
    except (TypeError, ValueError):
        exact = False
    if not exact or any(p < 0 for p in values):
        raise ParameterError(f"pad must be a non-negative integer or three of them, got {pad!r}")
    return values  # type: ignore[return-value]


def _weights(magnitude, mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The mask times the magnitude scaled to mean 1 in it (the mask alone if None)."""
    mask_f = mask.to(like.dtype)
    if magnitude is None:
        return mask_f
    mag = check_magnitude(magnitude, tuple(mask.shape), mask, dtype=like.dtype, device=like.device)
    mean = mag[mask].mean()
    if float(mean) <= 0:
        raise InputError("magnitude is zero everywhere in the mask")
    return torch.where(mask, mag / mean, 0.0)


def pdf(
    total_field_ppm: torch.Tensor,
    mask: torch.Tensor,
    *,
    voxel_size_mm: Vector3 = (1.0, 1.0, 1.0),
    b0_dir: Vector3 = (0.0, 0.0, 1.0),
    magnitude: torch.Tensor | None = None,
    pad: int | Sequence[int] = 16,
    max_iterations: int = 100,
    tolerance: float = 1e-4,
    form: KernelForm = "kspace",
    callback: StatusCallback | None = None,
) -> BackgroundResult:
    r"""Projection onto dipole fields.

    .. math::

       \chi_b = \arg\min_{\chi} \lVert W M D (1 - M) \chi - W M f\rVert_2^2, \qquad
       f_L = M\,(f - D(1 - M)\chi_b),

    with :math:`M` the mask and :math:`D` the dipole convolution on the padded
    grid (zero padding enlarges the region :math:`1 - M` where background sources
    may lie), solved through the normal equations
    :math:`(1-M) D W^2 M D (1-M)\,\chi = (1-M) D W^2 M f` by conjugate gradient
    from zero. :math:`W` is the mask times the magnitude scaled to mean 1 (the
    field noise is inversely proportional to the magnitude).

    Parameters
    ----------
    total_field_ppm
        Total field (ppm of B0), shape ``(X, Y, Z)``; values outside ``mask`` are ignored.
    mask
        Region of interest ``(X, Y, Z)`` (non-zero = inside).
    voxel_size_mm
        Voxel size (mm).
    b0_dir
        B0 direction in voxel coordinates.
    magnitude
        Optional magnitude ``(X, Y, Z)`` for the weights :math:`W`.
    pad
        Zero padding (voxels per side; rounded up to fast FFT sizes) of the grid
        on which background sources are fitted.
    max_iterations, tolerance
        Of CG (relative residual of the normal equations). ``max_iterations=0`` fits no
        background (:math:`\chi_b = 0`): the total field is returned on the mask.
    form
        Dipole kernel of the fit: ``"kspace"`` (sampled continuous kernel) or
        ``"image"`` (voxel-integrated); see :func:`~torchqsm.physics.dipole_kernel`.
    callback
        Receives a :class:`~torchqsm.solvers.SolverStatus` per CG iteration
        (``solution`` is :math:`\chi_b` on the padded grid).

    Returns
    -------
    BackgroundResult
        Local field (ppm) on the (uneroded) mask.

    References
    ----------
    Liu T, Khalidov I, de Rochefort L, et al. A novel background field removal
    method for MRI using projection onto dipole fields (PDF). NMR Biomed
    2011;24:1129–1136. doi:10.1002/nbm.1670

    Examples
    --------
    The field of a sphere outside the mask is removed:

    >>> from torchqsm.simulate import sphere, forward_field
    >>> outside = sphere((32, 32, 32), radius=4, center=(6, 16, 16))
    >>> field = forward_field(outside, pad=16)
    >>> brain = sphere((32, 32, 32), radius=8, center=(20, 16, 16)) > 0.5
    >>> out = pdf(field, brain, pad=0, tolerance=1e-5)
    >>> bool(out.local_field_ppm.abs().max() < 0.02 * field[brain].abs().max())
    True
    """
    field = prepare(total_field_ppm, mask, voxel_size_mm=voxel_size_mm, b0_dir=b0_dir)
    max_iterations, tolerance = check_loop(max_iterations, tolerance)
    padding = padding_for(field.shape, _pad_amounts(pad))
    dtype, device = field.field.dtype, field.field.device
    weights2 = padding.forward(_weights(magnitude, field.mask, field.field)) ** 2
    inside = padding.forward(field.mask.to(dtype))
    outside = 1.0 - inside
    if not bool(outside.any()):
        raise InputError("the mask fills the whole padded grid: there is no room for background sources; "
                         "use pad > 0")
    if form not in ("kspace", "image"):
        raise ParameterError(f"form must be 'kspace' or 'image', got {form!r}")
    dipole = DipoleOp(padding.padded_shape, voxel_size_mm=field.voxel_size_mm, b0_dir=field.b0_dir,
                      form=form, dtype=dtype, device=device)

    def normal(chi: torch.Tensor) -> torch.Tensor:
        return outside * dipole(weights2 * dipole(outside * chi))

    rhs = outside * dipole(weights2 * padding.forward(field.field))
    chi_background = cg(normal, rhs, max_iterations=max_iterations, tolerance=tolerance, callback=callback)
    background = padding.adjoint(dipole(outside * chi_background))
    return field.result(field.field - background, field.mask)
