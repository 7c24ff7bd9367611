"""`bertstream demo`: the whole job on embedded defaults, with the sample events in `data/`."""

from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
