"""Values megadepth writes into ``#SBATCH`` lines (prep's stage arrays, the sweep's arrays): one check.

sbatch reads those lines itself, not a shell: a space ends the value and the rest is silently dropped
or misread, and quotes are kept literally. So a value may hold only what Slurm's options need.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

SBATCH_VALUE = re.compile(r"[A-Za-z0-9._+,:@%=/-]+")
"""What a value in an #SBATCH line may hold: no whitespace, quotes or shell characters."""

SLURM_TIME = re.compile(r"\d+(:\d+){0,2}|\d+-\d+(:\d+){0,2}")
"""sbatch --time: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS (man sbatch)."""


def sbatch_value_problem(values: Mapping[str, str | None]) -> str | None:
    """The first problem with ``{flag: value}`` (None values are unset), as a one-line message, or None.

    Callers raise it in their own error class, so each command keeps its one-line, exit-2 handling.
    """
    for flag, value in values.items():
        if value is None:
            continue
        if not SBATCH_VALUE.fullmatch(value):
            return (f"{flag} {value!r}: an #SBATCH value may only hold letters, digits and ._+,:@%=/- "
                    "(no spaces, quotes or shell characters)")
        if flag == "--time" and not SLURM_TIME.fullmatch(value):
            return (f"--time {value}: Slurm takes minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS "
                    "(e.g. 04:00:00 or 1-12:00:00)")
    return None
