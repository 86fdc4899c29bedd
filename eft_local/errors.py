"""User-facing errors: one clear line, never a traceback."""


class UserError(Exception):
    """A problem the user can fix. The message is the single line we print."""
