"""The one exception type for mistakes a user can make (bad config, bad dataset, missing or corrupt file).

The CLI prints its message without a traceback and exits non-zero. Internal bugs raise anything else and keep
their traceback. A message should name the file or field, the value given, and the fix.
"""


class ScratchdetError(Exception):
    """A user-facing error: the message alone must tell the user what is wrong and how to fix it."""
