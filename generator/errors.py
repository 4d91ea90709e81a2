"""The one error type vgen raises for a user's mistake."""


class VgenError(Exception):
    """A problem the user can fix; the message says what and where.

    The CLI prints it as ``Error: ...`` and exits 1. Several problems found together
    (for example by ``vgen check``) travel as one error with one line each.
    """

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = problems or []

    def __str__(self) -> str:
        text = super().__str__()
        if self.problems:
            text += "\n" + "\n".join(f"  {p}" for p in self.problems)
        return text
