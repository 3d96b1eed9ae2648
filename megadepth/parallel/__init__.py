"""Process groups and parallel layouts."""
