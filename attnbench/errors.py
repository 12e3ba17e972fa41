"""The user's-mistake exception, in a module that imports nothing, so the CLI can catch it without loading NumPy."""


class AttentionInputError(ValueError):
    """A caller passed arguments that do not describe a valid attention problem (or a command line that does not
    describe a valid run): a one-line message, never a traceback. A `ValueError`, so callers that already catch
    `ValueError` keep working."""
