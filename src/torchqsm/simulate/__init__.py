"""Simulation: phantoms and the forward model (more arrives with the simulation engine)."""

from .forward import add_noise, forward_field
from .phantoms import cylinder, ellipsoid, shapes_phantom, sphere

__all__ = ["sphere", "ellipsoid", "cylinder", "shapes_phantom", "forward_field", "add_noise"]
