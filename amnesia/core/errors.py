"""One exception family, so the CLI and components can turn any of them into a one-line message."""


class AmnesiaError(Exception):
    """Base class: str(err) is a single line that says what is wrong and what to fix."""


class ConfigError(AmnesiaError):
    """A setting or config value is invalid; the message names the field."""


class StoreError(AmnesiaError):
    """The artifact store could not do what was asked (S3 or local)."""


class MissingError(StoreError):
    """The object or file asked for does not exist."""


class IntegrityError(StoreError):
    """Stored bytes do not match their recorded digest, or an object is missing."""


class StackError(AmnesiaError):
    """The local S3 / MLflow stack could not be started, checked or stopped."""


class LineageError(AmnesiaError):
    """A lineage write was refused (e.g. it looked like record text) or MLflow failed."""
