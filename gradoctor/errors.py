"""The one error hierarchy of gradoctor.

The library raises these; only ``gradoctor.cli`` turns them into messages and exit codes
(``exit_code`` on each class is the documented process exit status).
"""

from __future__ import annotations

from dataclasses import dataclass


class GradoctorError(Exception):
    """Base class. ``exit_code`` is what the CLI exits with."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  fix: {self.hint}"


class UsageError(GradoctorError):
    """Bad command-line usage or bad arguments to the Python API (exit code 2)."""

    exit_code = 2


@dataclass(frozen=True)
class RecipeProblem:
    """One problem in a recipe: where (dotted key path and 1-based YAML line) and what to do."""

    path: str
    message: str
    line: int | None = None
    hint: str | None = None

    def format(self) -> str:
        where = self.path or "<recipe>"
        if self.line is not None:
            where += f" (line {self.line})"
        text = f"{where}: {self.message}"
        if self.hint:
            text += f" — {self.hint}"
        return text


class RecipeError(GradoctorError):
    """A recipe with one or more problems; all of them are collected before raising (exit 2)."""

    exit_code = 2

    def __init__(self, problems: list[RecipeProblem], *, source: str | None = None):
        self.problems = list(problems)
        self.source = source
        head = f"{len(self.problems)} problem(s) in recipe" + (f" {source}" if source else "")
        body = "\n".join("  - " + p.format() for p in self.problems)
        super().__init__(f"{head}:\n{body}")

    def __str__(self) -> str:
        return self.message


class UserCodeError(GradoctorError):
    """The user's own code (model, data, loss, optimizer) raised (exit 1).

    ``user_traceback`` holds the formatted frames from the user's files only.
    """

    exit_code = 1

    def __init__(self, message: str, *, user_traceback: str = "", hint: str | None = None):
        super().__init__(message, hint=hint)
        self.user_traceback = user_traceback

    def __str__(self) -> str:
        text = self.message
        if self.user_traceback:
            text += "\n" + self.user_traceback.rstrip()
        if self.hint:
            text += f"\n  fix: {self.hint}"
        return text


class TrainingInterrupted(GradoctorError):
    """Ctrl-C during training: events flushed, report and checkpoint written (exit 130)."""

    exit_code = 130


class OutOfMemory(GradoctorError):
    """The device ran out of memory during training (exit 4); the report is written."""

    exit_code = 4
