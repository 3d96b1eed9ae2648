"""Sweeps: a grid of training runs over any config keys, run locally (``--jobs N``) or as a Slurm job
array, resumable, each point its own ``megadepth train`` process and run directory.

``spec`` parses and expands a sweep spec; ``state`` reads a point's state from its run directory;
``runner`` holds the sweep directory and the local executor; ``slurm`` the job-array writer.
"""

from megadepth.sweep.spec import Point, SweepSpec, expand, load_spec, parse_spec, point_id

__all__ = ["Point", "SweepSpec", "expand", "load_spec", "parse_spec", "point_id"]
