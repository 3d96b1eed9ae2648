"""Analysis of runs: coordinate checks (coord_check) and ``megadepth report`` (report), built from runs,
fitting, transfer, table and figures."""
