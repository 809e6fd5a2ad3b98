"""Error types a reader can act on. Every message names the file or parameter and the fix."""


class FacestudyError(Exception):
    """Base class of every error facestudy raises on purpose."""


class ParameterError(FacestudyError, ValueError):
    """A notebook or CLI parameter is unknown or has a bad value (the message lists the valid choices)."""


class DataError(FacestudyError, RuntimeError):
    """A data file is missing, corrupt or fails its checksum (the message says where to get it)."""
