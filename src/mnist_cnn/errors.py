"""The exceptions users see: the CLI turns each into a one-line message and an exit status."""


class MnistCnnError(Exception):
    """A problem with the user's input or environment (not a bug): its message says what to do.
    Exit status 1."""


class CannotWrite(MnistCnnError):
    """A file could not be written (a full disk, a read-only folder): no download's fault."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with what the user needs to know, such as what was saved. Exit status 130."""
