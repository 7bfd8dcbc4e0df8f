"""The one exception type for problems the user can fix (bad input, bad config, busy run dir).

The CLI prints its message on one line and exits non-zero; anything else is a bug and keeps its
traceback. Messages name the file, line or key at fault.
"""


class MoeMtError(Exception):
    """A user-facing error: one line, naming what is wrong and where."""

    exit_code = 1
