"""User-facing errors: one actionable line, a non-zero exit, no traceback."""


class StepError(Exception):
    """Bad input or a failed step, reported as one line naming the file and field."""

    exit_code = 2

    def __init__(self, message: str, *, source: str | None = None, field: str | None = None,
                 exit_code: int | None = None):
        if exit_code:
            self.exit_code = exit_code
        self.source = source
        self.field = field
        self.detail = message
        where = ": ".join(part for part in (source, field) if part)
        super().__init__(f"{where}: {message}" if where else message)
