"""Errors a user can cause (the CLI prints their message as one line and exits 2), and a stopped run."""

import signal


class UserError(Exception):
    """Something the user can fix (bad source, missing credentials, bad parameter...).

    The message says what is wrong and what to do, in one line.
    """


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal (Ctrl-C, SIGTERM, SIGHUP); the CLI exits with 128 + its number.

    A KeyboardInterrupt, so that no ``except Exception`` on the way up swallows it.
    """

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum
