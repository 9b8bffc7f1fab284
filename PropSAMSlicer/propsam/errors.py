"""Exceptions that carry a message meant for the user (CLI exit 2, Slicer error dialog)."""


class PropSAMError(Exception):
    """Base class: bad input or an unusable resource, explained in one line."""


class InputError(PropSAMError):
    """The image, prompt or options are not acceptable."""


class WeightsError(PropSAMError):
    """A weights file or manifest is missing, corrupt or does not match its configuration."""


class ResourceError(PropSAMError):
    """The job would not fit in memory or the requested device is unavailable."""


class Cancelled(PropSAMError):
    """The user cancelled the run; nothing was written."""
