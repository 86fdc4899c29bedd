"""User-facing errors: one clear line, never a traceback."""


class UserError(Exception):
    """A problem the user can fix. The message is the single line we print."""


class Cancelled(Exception):
    """The caller's cancel flag was seen; raised between decoding steps."""


class EngineBusy(UserError):
    """A second generation was started while one is running on the same engine."""
