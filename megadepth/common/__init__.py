"""What every part of megadepth shares and nothing else: files written atomically and hashed (io), the
error classes for bad input (errors), the typed YAML loader (typed_yaml), and Slurm (slurm: the batch
scripts of launch, sweep and prep from templates/, sinfo, the check of a job's requests against the
nodes). It imports no other megadepth package, so any package, data_prep and launch included, may import
it without an import cycle (tests/test_import_rules.py holds that)."""
