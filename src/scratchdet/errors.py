"""The one exception type for mistakes a user can make (bad config, bad dataset, missing or corrupt file).

The CLI prints its message without a traceback and exits non-zero. Internal bugs raise anything else and keep
their traceback. A message should name the file or field, the value given, and the fix.
"""

PAUSED_EXIT_CODE = 143  # a training stopped by a signal (as a shell reports SIGTERM), its checkpoint saved


class ScratchdetError(Exception):
    """A user-facing error: the message alone must tell the user what is wrong and how to fix it."""


class TrainingPaused(ScratchdetError):
    """Training stopped before the end of its schedule, after saving a checkpoint; `--resume` continues it.

    `exit_code` is what the command exits with: 0 when it stopped where it was asked to (`--stop-at`),
    `PAUSED_EXIT_CODE` when a signal asked it to stop.
    """

    def __init__(self, message: str, iteration: int, exit_code: int) -> None:
        super().__init__(message)
        self.iteration = iteration
        self.exit_code = exit_code
