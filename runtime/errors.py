"""Errors that the CLI reports as one clear line instead of a traceback.

Every stage raises these (or subclasses) for bad input: the message names the file, class or option at fault.
"""


class EdgesegError(Exception):
    """Base class: a problem with the user's input or environment, not a bug."""


class DataError(EdgesegError):
    """A dataset, image or label file is missing, unreadable or inconsistent."""


class MetadataError(EdgesegError, ValueError):
    """A model file carries no edgeseg metadata, or metadata that cannot be used."""


class ModelFormatError(EdgesegError):
    """A model file has an unknown type, is corrupt, or does not fit the requested use."""


class BackendUnavailable(EdgesegError):
    """An inference backend (TensorRT, CUDA, Triton, torch) was asked for but is not installed or usable here."""


class VideoSourceError(EdgesegError):
    """A video source or sink URI cannot be opened, or a stream broke beyond recovery."""


class ConfigError(EdgesegError, ValueError):
    """A config file or ``--set`` override names an unknown key or has the wrong type."""
