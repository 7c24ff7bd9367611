"""`python -m worker`: the streaming worker alone (the container's entry point)."""

import signal

# A SIGHUP means "reload the model" once the worker runs; until then it must not end the process.
signal.signal(signal.SIGHUP, signal.SIG_IGN)

from worker.main import main  # noqa: E402 - after the signal is ignored: the imports take seconds

main()
