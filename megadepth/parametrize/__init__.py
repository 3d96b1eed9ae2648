"""Parametrizations (SP, muP, Depth-muP, CompleteP, custom alpha/gamma): roles, rules and their application."""

from megadepth.parametrize.apply import initialize, param_groups, param_roles, roles_present, stable_seed
from megadepth.parametrize.roles import Role
from megadepth.parametrize.rules import PRESET_EXPONENTS, Multipliers, Parametrization, RoleRule

__all__ = [
    "PRESET_EXPONENTS",
    "Multipliers",
    "Parametrization",
    "Role",
    "RoleRule",
    "initialize",
    "param_groups",
    "param_roles",
    "roles_present",
    "stable_seed",
]
