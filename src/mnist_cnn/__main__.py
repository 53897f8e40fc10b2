"""`python -m mnist_cnn` and the `mnist-cnn` command.

The package imports nothing heavy until the command runs (its __init__ is lazy), so that Ctrl-C
during the second or two of importing torch and the rest is one line too.
"""

import os
import signal


def interrupted_while_starting(_signum, _frame) -> None:
    # Unwinding an import half-way can leave a library broken for the rest of the process (torch
    # takes a numpy import that failed for "numpy is missing"), and nothing is written yet: stop
    os.write(2, b"mnist-cnn: interrupted\n")
    os._exit(130)


def run() -> None:
    signal.signal(signal.SIGINT, interrupted_while_starting)
    from .cli import run as run_command

    signal.signal(signal.SIGINT, signal.default_int_handler)  # KeyboardInterrupt from here on
    run_command()


if __name__ == "__main__":
    run()
