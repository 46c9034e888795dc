"""The errors a user can fix. common/entry.py shows them as one line, no traceback, exit code 2."""


class UserError(Exception):
    """A problem the user can fix; the message names it and the fix. Shown without a traceback."""


class ConfigError(UserError, ValueError):
    """A config problem the user can fix; the message says how."""
