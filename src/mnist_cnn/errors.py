"""The one exception type users see: the CLI turns it into a one-line message and exit status 1."""


class MnistCnnError(Exception):
    """A problem with the user's input or environment (not a bug): its message says what to do."""
