"""Conveyor's exceptions. Each message names the component and the channel,
file or artifact at fault, what was expected, and what to do."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "ConveyorError",
    "PipelineDefinitionError",
    "ExecutionTakenOverError",
    "ExecutorError",
    "RunFailedError",
    "closest",
]


class ConveyorError(Exception):
    """Base of every error Conveyor raises on purpose."""


class PipelineDefinitionError(ConveyorError, TypeError):
    """A pipeline or component was wired wrongly; raised when it is built."""


class ExecutorError(ConveyorError):
    """An executor met input it cannot use. Raised before any output is
    published; the message says what was expected and what to do."""


class ExecutionTakenOverError(ConveyorError):
    """While an execution ran, another run recorded it as ended (took it for
    abandoned: its owner sent no heartbeat); its outputs are not published."""


class RunFailedError(ConveyorError):
    """A pipeline run stopped because a component failed."""

    def __init__(self, message: str, *, component_id: str, execution_id: int | None) -> None:
        super().__init__(message)
        self.component_id = component_id
        self.execution_id = execution_id


def closest(name: str, choices: Iterable[str]) -> str:
    """' Did you mean X?' for the closest of `choices`, or ''."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" Did you mean {match[0]!r}?" if match else ""
