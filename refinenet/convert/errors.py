"""The one error type of the converters, so callers can tell a bad checkpoint from a bug."""


class ConversionError(ValueError):
    """A checkpoint could not be converted: unknown format, or keys/shapes that do not match."""
