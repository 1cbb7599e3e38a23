"""How a network's inputs and outputs relate to physical units (stored in each model's card)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

__all__ = ["Normalization"]


@dataclass(frozen=True)
class Normalization:
    r"""Linear scaling between physical units and the network's numbers.

    The network sees :math:`x = f / s_\mathrm{in}` (local field ``f`` in ppm of B0, zero
    outside the mask) and returns :math:`y`, read as :math:`\chi = s_\mathrm{out}\,y` (ppm).
    Fields in ppm do not depend on B0, so one network serves every field strength.

    Attributes
    ----------
    input_scale_ppm
        :math:`s_\mathrm{in}`, ppm of B0 per network unit (about the field's spread in the brain).
    output_scale_ppm
        :math:`s_\mathrm{out}`, ppm of χ per network unit.

    Examples
    --------
    >>> n = Normalization(input_scale_ppm=0.02, output_scale_ppm=0.1)
    >>> round(float(n.to_network(torch.tensor(0.04))), 6), round(float(n.from_network(torch.tensor(2.0))), 6)
    (2.0, 0.2)
    """

    input_scale_ppm: float = 0.02
    output_scale_ppm: float = 0.1

    def __post_init__(self) -> None:
        if not (self.input_scale_ppm > 0 and self.output_scale_ppm > 0):
            raise ValueError(f"normalization scales must be positive, got {self}")

    def to_network(self, local_field_ppm: torch.Tensor) -> torch.Tensor:
        """Field (ppm) → network input."""
        return local_field_ppm / self.input_scale_ppm

    def from_network(self, output: torch.Tensor) -> torch.Tensor:
        """Network output → χ (ppm)."""
        return output * self.output_scale_ppm

    def chi_to_network(self, chi_ppm: torch.Tensor) -> torch.Tensor:
        """χ (ppm) → network units (training targets)."""
        return chi_ppm / self.output_scale_ppm

    def as_dict(self) -> dict[str, float]:
        return asdict(self)
