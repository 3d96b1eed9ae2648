"""What every part of megadepth shares: atomic files (io), error classes (errors), the typed YAML loader
(typed_yaml) and Slurm (slurm). It imports no other megadepth package (tests/test_import_rules.py)."""
