"""Values megadepth writes into ``#SBATCH`` lines (prep's stage arrays, the sweep's arrays, ``launch
--slurm``): one check for option values, one for paths.

sbatch reads those lines itself, not a shell: a space ends an unquoted value and the rest is silently
dropped or misread. So an option value (a partition, a time) may hold only what Slurm's options need, and
a path (a log file under the output directory) is written quoted and must avoid the few characters no
quoting carries through (:func:`script_path_problem`).
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


SCRIPT_PATH_REFUSED = {"\n": "a line break", "\r": "a carriage return", "\\": "a backslash", "%": "a '%'"}
"""Characters a path written into a batch script's ``#SBATCH --output=`` line or a comment line cannot hold.

Everything else is written shell-quoted (``shlex.quote``), which sbatch's own reading of ``#SBATCH`` lines
takes apart the same way. But a line break would end the comment or ``#SBATCH`` line and turn the rest of
the path into a shell command (and stop sbatch reading the directives that follow), sbatch treats a
backslash as an escape even inside quotes, and it expands ``%`` in log file names (``%j``: the job id)."""


def script_path_problem(option: str, path: str) -> str | None:
    """Why ``path`` cannot be written into a generated Slurm script, as one line, or None."""
    for char, what in SCRIPT_PATH_REFUSED.items():
        if char in path:
            return (f"{option} {path!r} holds {what}, which a Slurm batch script cannot carry in its #SBATCH "
                    "--output line or comments: choose a directory without it")
    return None
