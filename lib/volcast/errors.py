"""Errors a user can cause: the CLI prints their message as one line and exits 2."""


class UserError(Exception):
    """Something the user can fix (bad source, missing credentials, bad parameter...).

    The message says what is wrong and what to do, in one line.
    """
