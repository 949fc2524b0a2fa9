"""segfw's exceptions: one type per kind of fault. The commands report each as one message and a
non-zero exit, without a traceback; in Python they are ordinary exceptions."""


class SegfwError(Exception):
    """A fault segfw can name: the message says what is at fault and how to fix it."""


class ConfigError(SegfwError, ValueError):
    """A bad setting: a config value, a path that does not exist, a checkpoint that is not one."""


class DataError(SegfwError, ValueError):
    """A dataset file that cannot be used: unreadable, unpaired, of the wrong size or format, or
    holding labels that are not classes.

    The message is the only positional argument, so that a DataLoader worker can re-raise the
    error in the main process as the same type.

    Args:
        message: names the file and what was expected.
        kind: one of the kinds of ``segfw.data.problems`` (for reports that group problems).
    """

    def __init__(self, message: str, kind: str = "unreadable file") -> None:
        super().__init__(message)
        self.kind = kind


class ExportError(SegfwError, RuntimeError):
    """An exported model that cannot be written, or that does not reproduce the PyTorch model."""


class NonFiniteLossError(SegfwError, RuntimeError):
    """The training loss became NaN or infinite."""


class LightningVersionError(SegfwError, ImportError):
    """The installed pytorch-lightning is outside the releases ``segfw.lightning_compat`` was
    checked on; raised when segfw's Lightning code is imported."""
