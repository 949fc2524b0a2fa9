"""segfw's own exceptions: the ones the entry points report as a message, without a traceback."""


class ConfigError(ValueError):
    """Bad input: a config value, a dataset file or a checkpoint. The message names the culprit and
    the fix."""


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""
