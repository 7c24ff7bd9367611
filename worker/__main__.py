"""`python -m worker`: the streaming worker alone (the container's entry point)."""

from worker.main import main

main()
