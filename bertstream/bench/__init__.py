"""`bertstream bench`: our path and the baselines side by side, in one run."""
