"""The exceptions of the product: one base, a few kinds that carry their data."""

from __future__ import annotations

from dataclasses import dataclass


class WorkflowError(Exception):
    """Base of every error the product raises on purpose."""

    code = "workflow_error"


@dataclass(frozen=True)
class Issue:
    """One problem in a definition, placed in its file."""

    message: str
    field: str = ""
    filename: str = ""
    line: int = 0
    column: int = 0

    def __str__(self) -> str:
        place = self.filename or "<definition>"
        if self.line:
            place += f":{self.line}:{self.column}"
        where = f" {self.field}:" if self.field else ""
        return f"{place}:{where} {self.message}"


class DefinitionError(WorkflowError):
    """A workflow definition, or the inputs given to it, cannot be accepted."""

    code = "invalid_definition"

    def __init__(self, issues: list[Issue]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))


class UnknownRunError(WorkflowError):
    code = "unknown_run"

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"no run with id {run_id!r}")


class TaskError(WorkflowError):
    """Raised by a plugin to fail its step with a message an operator can act on.

    `details` is JSON-serialisable data stored with the failure. A retryable
    failure is tried again under the step's retry policy; pass
    `retryable=False` when trying again cannot help.
    """

    code = "task_error"

    def __init__(self, message: str, details: object = None, retryable: bool = True) -> None:
        self.details = details
        self.retryable = retryable
        super().__init__(message)


class StoreError(WorkflowError):
    code = "store_error"
