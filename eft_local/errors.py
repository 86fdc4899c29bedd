"""User-facing errors: one clear line, never a traceback."""


class UserError(Exception):
    """A problem the user can fix. The message is the single line we print."""


class Cancelled(Exception):
    """The caller's cancel flag was seen; raised between decoding steps."""
