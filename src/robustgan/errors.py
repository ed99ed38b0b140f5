"""The project's exceptions: errors a user can cause, shown by the CLI as one line."""


class RobustganError(Exception):
    """Base class for errors a user can fix (bad file, bad config, bad eps...).

    The CLI prints ``str(err)`` on one line and exits non-zero, without a traceback.
    """


class DataError(RobustganError):
    """A dataset file is missing, truncated or malformed."""


class ConfigError(RobustganError):
    """A configuration key or value is invalid."""


class RunError(RobustganError):
    """A run directory is missing, incomplete or inconsistent."""
