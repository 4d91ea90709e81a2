"""The one error type vgen raises for a user's mistake, and the problems it carries."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong in one file: the file as messages show it, where in it (an
    entity, a field, a table such as ``[range]``; "" for the file as a whole) and the
    rule it breaks. Callers that group or filter problems read the parts; people read
    ``str(problem)``."""

    path: str
    where: str
    message: str

    def format(self, with_path: bool = True) -> str:
        """``path: where: message`` (the parts that are set), as vgen check prints it."""
        parts = [self.path] if with_path else []
        if self.where:
            parts.append(self.where)
        parts.append(self.message)
        return ": ".join(parts)

    def __str__(self) -> str:
        return self.format()


class VgenError(Exception):
    """A problem the user can fix; the message says what and where.

    The CLI prints it as ``Error: ...`` and exits 1. Several problems found together
    (for example by ``vgen check``) travel as one error with one line each.
    """

    def __init__(self, message: str, problems: list[Problem] | None = None):
        super().__init__(message)
        self.problems = list(problems or [])

    def __str__(self) -> str:
        text = super().__str__()
        if self.problems:
            text += "\n" + "\n".join(f"  {p}" for p in self.problems)
        return text
