"""The pipeline's own error type, kept free of heavy imports so the command line can load it instantly."""


class ConfigError(ValueError):
    """A config value a run cannot use. Its message is the single line shown to the user."""


class DataError(ConfigError):
    """A dataset that is missing, truncated or fails its checksum; the message says which file and what to do."""


class ChecksumError(DataError):
    """Downloaded bytes that are not the published file: never retried silently, never kept."""


def first_line(error: BaseException) -> str:
    """An error's message cut to its first line (library errors run on for pages), or its type if it has none."""
    return next(iter(str(error).strip().splitlines()), type(error).__name__)


class TrainingError(RuntimeError):
    """A run that failed for a reason the user can act on (training diverged, no job of a sweep finished). Its
    message is the single line shown; the exit status is 1, not 2 (which means the input was refused)."""
