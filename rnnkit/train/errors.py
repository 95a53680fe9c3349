"""Errors a user can cause (bad input, bad options): reported as one line, exit code 2."""


class UserError(Exception):
    """Expected, user-caused failure; ``rnnkit.cli.main`` prints its message alone on one line."""

    exit_code = 2


class Interrupted(UserError):
    """Training stopped on Ctrl-C / SIGTERM (or a test's request) after writing a checkpoint."""

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code


class Diverged(UserError):
    """A loss, metric or weight went non-finite; nothing after the last good checkpoint is kept
    (the step record of a non-finite training loss is logged before it is raised)."""
