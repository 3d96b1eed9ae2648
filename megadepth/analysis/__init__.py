"""Analysis of runs: plots (and, later, coordinate checks and transfer reports)."""
