"""The project's exceptions: errors a user can cause, shown by the CLI as one line."""


class RobustganError(Exception):
    """Base class for errors a user can fix (bad file, bad config, bad eps...).

    The CLI prints ``str(err)`` on one line and exits with ``exit_code``, without a traceback.
    """

    exit_code = 2


class DataError(RobustganError):
    """A dataset file is missing, truncated or malformed."""


class ConfigError(RobustganError):
    """A configuration key or value is invalid."""


class RunError(RobustganError):
    """A run directory is missing, incomplete or inconsistent."""


class Diverged(RunError):
    """A training loss became NaN or infinite; the last good checkpoint is kept."""

    exit_code = 3


class Interrupted(RunError):
    """Training stopped on Ctrl-C after saving a checkpoint."""

    exit_code = 130
