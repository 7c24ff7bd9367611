"""Start-up failures that stop a process with one line that says what to fix, not a traceback."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click


class StartupError(RuntimeError):
    """A bad setting, a missing model or an unreachable service; the message says what to fix."""


class UserError(click.ClickException):
    """One clear line on stderr and exit code 2, no traceback."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"bertstream: error: {self.format_message()}", err=True)


def clear_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Known start-up failures (config, model, services) become one line, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from pipelines.registry import ModelNotFoundError

        try:
            return fn(*args, **kwargs)
        except (StartupError, ModelNotFoundError) as exc:
            raise UserError(str(exc)) from None

    return wrapper
