"""The `bertstream` command line: the top floor, imported by nothing else."""
