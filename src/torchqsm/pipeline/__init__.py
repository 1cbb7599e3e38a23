"""Recipes composing the steps; the method registry."""

from .registry import METHODS, MethodSpec, ParameterSpec, coerce_parameter, get_method, invert, register

__all__ = ["METHODS", "MethodSpec", "ParameterSpec", "coerce_parameter", "get_method", "invert", "register"]
