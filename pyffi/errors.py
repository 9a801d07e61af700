"""Exceptions raised by pyffi. Each maps a C status code to the Python
exception a caller would expect (FileNotFoundError, ValueError, ...), and all
derive from PyffiError so one ``except pyffi.PyffiError`` catches everything."""


class PyffiError(Exception):
    """Base class of every error raised by the engine."""

    status = None


class ModelNotFoundError(PyffiError, FileNotFoundError):
    """A model, config or weight file that does not exist."""


class PyffiIOError(PyffiError, OSError):
    """A file that exists but could not be read."""


class InvalidArgumentError(PyffiError, ValueError):
    """A bad argument: wrong shape, dtype, empty input, bad parameter."""


class ConfigError(PyffiError, ValueError):
    """A config that is malformed, incomplete or contradictory."""


class WeightsError(PyffiError, ValueError):
    """Weights that are missing, misnamed, mis-shaped or of the wrong dtype."""


class BufferTooSmallError(PyffiError, ValueError):
    """An output buffer too small for the result."""


class OutOfRangeError(PyffiError, ValueError):
    """A token id outside the vocabulary or positions past the context."""


class UnsupportedError(PyffiError, ValueError):
    """A model feature (architecture, rope type, dtype) pyffi does not implement."""


class InternalError(PyffiError, RuntimeError):
    """A bug inside the engine; the call was stopped safely."""


class CancelledError(PyffiError):
    """The work was stopped by its caller (a progress callback said stop)."""


# Indexed by the C ABI's pyffi_status codes.
BY_STATUS = {
    1: InvalidArgumentError,
    2: ModelNotFoundError,
    3: PyffiIOError,
    4: ConfigError,
    5: WeightsError,
    6: BufferTooSmallError,
    7: OutOfRangeError,
    8: UnsupportedError,
    9: InternalError,
    10: CancelledError,
}
