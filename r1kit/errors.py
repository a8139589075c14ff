"""The one exception type for mistakes a user can fix (bad path, unknown model type, bad option).

The CLI prints these as one line without a traceback; the server turns them into 4xx responses.
"""


class UserError(ValueError):
    """Something the user asked for cannot be done; the message says what to change."""
