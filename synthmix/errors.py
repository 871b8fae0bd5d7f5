"""The errors a user can fix. The command line prints them as one line `error: ...` and exits 2; any other
exception is a bug and keeps its traceback."""


class UserError(Exception):
    """A problem the user can fix (a key, a file, a line, a setting), phrased so that one line says what to do."""


class ConfigError(UserError):
    """A configuration file or override that does not match the typed schema; the message names the dotted key."""


class DiskFullError(UserError):
    """The disk filled up while writing; the message names the path and what to free."""


class Preempted(Exception):
    """A run stopped on a preemption signal (SIGTERM, SIGUSR1) after writing a checkpoint; not an error, but
    not finished: the command line exits 75 so a job script can requeue it."""
