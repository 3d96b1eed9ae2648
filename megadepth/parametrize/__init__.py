"""Parametrizations (SP, muP, Depth-muP, CompleteP, custom alpha/gamma): roles, rules and their application."""

from megadepth.parametrize.apply import initialize, param_groups, param_roles, roles_present, stable_seed
from megadepth.parametrize.roles import Role
from megadepth.parametrize.rules import PRESETS, Multipliers, Parametrization, RoleRule, preset_gamma

__all__ = ["PRESETS", "Multipliers", "Parametrization", "Role", "RoleRule", "initialize", "preset_gamma",
           "param_groups", "param_roles", "roles_present", "stable_seed"]
