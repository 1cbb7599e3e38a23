r"""Simulate fine, sample coarse: the signal of a voxel is the sum of the signal inside it.

A scanner's voxel records the integral of the complex transverse magnetisation over its volume,
not the magnetisation at its centre. Where the field varies inside a voxel (next to a vein, an
air-tissue edge, a haemorrhage), the phase of that sum is not the mean field times TE, and its
magnitude drops (intravoxel dephasing): the measured field is not the dipole model's of the mean
χ. Here the signal is computed on a grid ``factor`` times finer per axis and averaged over each
block of :math:`\text{factor}^3` fine voxels:

.. math::

   S_e(\mathbf r) = \frac{1}{|V|}\sum_{\mathbf r' \in V(\mathbf r)} M_0(\mathbf r')\,
   e^{-R_2^*(\mathbf r') T_e}\, e^{i(\gamma B_0 T_e f(\mathbf r') + \varphi_0(\mathbf r'))}.

The ground truth that goes with it is the block mean of χ (partial volume) and of the fields.

References
----------
Marques JP, Meineke J, Milovic C, et al. QSM reconstruction challenge 2.0: a realistic in silico
head phantom for MRI data simulation and evaluation of susceptibility mapping procedures. Magn
Reson Med 2021;86:526–542. doi:10.1002/mrm.28716 (its signal is simulated at a finer resolution
and sampled coarse)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..errors import InputError
from ..physics import DipoleOp
from .lesions import add_veins
from .signal import complex_gre_signal

__all__ = ["block_mean", "upsample", "block_summed_signal", "fine_veins"]


def _check_factor(shape: Sequence[int], factor: int) -> None:
    if factor < 1 or any(n % factor for n in shape[-3:]):
        raise InputError(f"the fine grid {tuple(shape[-3:])} is not a whole number of {factor}-voxel blocks")


def block_mean(volume: torch.Tensor, factor: int) -> torch.Tensor:
    """Mean over blocks of ``factor``³ voxels: ``(..., fX, fY, fZ)`` → ``(..., X, Y, Z)`` (complex allowed).

    >>> block_mean(torch.arange(8.0).reshape(2, 2, 2), 2)
    tensor([[[3.5000]]])
    """
    _check_factor(volume.shape, factor)
    *lead, x, y, z = volume.shape
    blocks = volume.reshape(*lead, x // factor, factor, y // factor, factor, z // factor, factor)
    return blocks.mean(dim=(-5, -3, -1))


def upsample(volume: torch.Tensor, factor: int, *, mode: str = "nearest") -> torch.Tensor:
    """``(X, Y, Z)`` → ``(fX, fY, fZ)``: ``nearest`` (labels, piecewise-constant χ; its :func:`block_mean` is the
    input) or ``trilinear`` (smooth maps, voxel centres aligned)."""
    size = tuple(factor * n for n in volume.shape[-3:])
    kwargs = {} if mode == "nearest" else {"align_corners": False}
    out = F.interpolate(volume[None, None].float(), size=size, mode=mode, **kwargs)[0, 0]
    return out.to(volume.dtype)


def block_summed_signal(
    total_field_ppm: torch.Tensor,
    *,
    factor: int,
    echo_times_s: Sequence[float],
    b0_tesla: float,
    m0: torch.Tensor,
    r2star_hz: torch.Tensor,
    phase_offset_rad: torch.Tensor | None = None,
) -> torch.Tensor:
    """The coarse complex GRE signal ``(E, X, Y, Z)`` of fine maps ``(fX, fY, fZ)`` (module equation).

    One echo at a time, so the fine grid costs one complex volume of memory, not ``E``.

    >>> field = torch.zeros(4, 4, 4); field[0, 0, 0] = 10.0   # a 10 ppm spike inside one coarse voxel
    >>> s = block_summed_signal(field, factor=2, echo_times_s=[0.02], b0_tesla=3.0, m0=torch.ones(4, 4, 4),
    ...                         r2star_hz=torch.zeros(4, 4, 4))
    >>> bool(s[0, 0, 0, 0].abs() < 1.0), bool(torch.allclose(s[0, 1, 1, 1].abs(), torch.tensor(1.0)))
    (True, True)
    """
    _check_factor(total_field_ppm.shape, factor)
    echoes = []
    for te in echo_times_s:
        fine = complex_gre_signal(total_field_ppm, echo_times_s=[te], b0_tesla=b0_tesla, m0=m0,
                                  r2star_hz=r2star_hz, phase_offset_rad=phase_offset_rad)[0]
        echoes.append(block_mean(fine, factor))
    return torch.stack(echoes)


def fine_veins(
    chi_ppm: torch.Tensor,
    mask: torch.Tensor,
    *,
    count: int,
    factor: int,
    generator: torch.Generator,
    voxel_size_mm: Sequence[float],
    b0_dir: Sequence[float],
    pad: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Veins drawn ``factor`` times finer and their field computed there, both averaged into the coarse voxels.

    The coarse χ of a voxel a vein crosses is then the partial-volume mix of vein and tissue, and
    the field added is the voxel mean of the fine field (which differs from the dipole field of that
    mean χ next to the vein: the model error of sub-voxel sources). Returns the coarse χ with the
    veins and the field they add (ppm). Costs ``factor``³ the volume in memory and FFT time.
    """
    fine_grid = tuple(float(h) / factor for h in voxel_size_mm)
    chi_fine = upsample(chi_ppm.float(), factor)
    mask_fine = upsample(mask.to(torch.uint8), factor).bool()
    veined = add_veins(chi_fine, mask_fine, count=count, generator=generator, voxel_size_mm=fine_grid).float()
    added = (veined - chi_fine) * mask_fine
    del chi_fine, veined
    field = DipoleOp(tuple(added.shape), voxel_size_mm=fine_grid, b0_dir=tuple(b0_dir), pad=pad * factor)(added)
    return chi_ppm + block_mean(added, factor), block_mean(field, factor)
