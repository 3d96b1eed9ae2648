"""Sweeps: a grid of training runs over any config keys, run locally or as a Slurm job array, resumable.

``spec`` parses and expands a spec, ``state`` reads a point's run directory, ``runner`` holds the sweep
directory and the local executor, ``slurm`` the job-array writer."""
