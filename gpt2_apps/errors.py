"""The exit-status rule of every command in gpt2_apps (`gpt2 ...`, `gpt2-verify`, `gpt2-convert`).

0 success; 2 usage or bad input (argparse errors, missing or corrupt files, a value out of range: `ValueError`,
`FileNotFoundError`, ...); 1 any other failure (a backend or optional dependency not installed, a failed check, a
library error, a full disk: "No space left on device writing PATH"); 130 interrupted (Ctrl-C); 143 terminated
(SIGTERM: `run_command` turns it into `gpt2_core.hub.Terminated`, so the same cleanup as Ctrl-C runs and no temporary
directory is left). An error is one line on stderr, `PROG: error: message`; the traceback only with -v.
"""

from __future__ import annotations

import signal
import sys
import threading
import traceback
from typing import Callable

# Standard library only at import time: the console scripts import this (through gpt2_apps.cli) before anything
# else, so a Ctrl-C during the heavy imports that follow already meets `interruptible`. gpt2_core.hub (which
# imports numpy through gpt2_core) is imported inside `run_command`.

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143

BAD_INPUT = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError)


class UsageError(Exception):
    """A problem with the command line or its inputs: reported in one line, exit status 2."""


class NotInstalledError(ImportError):
    """A backend's framework (or another optional package) is missing; the message says what to install. Exit 1."""


def error(prog: str, message: str, verbose: bool = False) -> None:
    """Write `PROG: error: message` to stderr, and the current traceback when `verbose`."""
    sys.stderr.write(f"{prog}: error: {message}\n")
    if verbose:
        traceback.print_exc()


# Set by `interruptible`'s SIGINT handler: a library that turns the KeyboardInterrupt raised inside its import
# into another error (numpy: "ImportError: PyCapsule_Import could not import module 'datetime'") is still
# reported as the interrupt it was.
_INTERRUPTED = threading.Event()


def _interrupted(prog: str) -> int:
    sys.stderr.write(f"{prog}: interrupted.\n")
    return EXIT_INTERRUPTED


def interruptible(prog: str, fn: Callable[[], int | None]) -> int:
    """Run a console script's `fn`, with Ctrl-C anywhere in it (the imports before `run_command` included: numpy,
    a framework) one line on stderr and exit 130, never a traceback, also when a library turned the interrupt
    into an error of its own. The entry points (`gpt2_apps.cli.main`, `convert_main`, `python -m gpt2_apps`)
    wrap their whole body in it; this module and gpt2_apps.cli import only the standard library, so the window
    before it is Python's own start-up."""
    previous = None
    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGINT) is signal.default_int_handler:

        def on_sigint(signum, frame):
            _INTERRUPTED.set()
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGINT, on_sigint)
    _INTERRUPTED.clear()
    try:
        return int(fn() or 0)
    except KeyboardInterrupt as e:
        if type(e).__name__ == "Terminated":  # gpt2_core.hub.Terminated (SIGTERM), not imported here
            sys.stderr.write(f"{prog}: terminated.\n")
            return EXIT_TERMINATED
        return _interrupted(prog)
    except Exception:
        if _INTERRUPTED.is_set():
            return _interrupted(prog)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def run_command(prog: str, fn: Callable[[], int | None], verbose: bool = False, install_hint: str = "") -> int:
    """Run `fn` and map what it raises to an exit status (see the module docstring). SystemExit passes through.
    SIGTERM while `fn` runs raises `Terminated` in it (`gpt2_core.hub.sigterm_raises`)."""
    from gpt2_core.hub import DiskFullError, Terminated, sigterm_raises

    try:
        with sigterm_raises():
            return int(fn() or 0)
    except Terminated:
        sys.stderr.write(f"{prog}: terminated.\n")
        if verbose:
            traceback.print_exc()
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted.\n")
        if verbose:
            traceback.print_exc()
        return EXIT_INTERRUPTED
    except Exception as e:
        if _INTERRUPTED.is_set():  # Ctrl-C, turned into another error by the library it hit (see interruptible)
            if verbose:
                traceback.print_exc()
            return _interrupted(prog)
        if isinstance(e, (UsageError, *BAD_INPUT)):
            error(prog, str(e), verbose)
            return EXIT_USAGE
        if isinstance(e, (NotInstalledError, DiskFullError)):
            error(prog, str(e), verbose)
            return EXIT_FAILURE
        if isinstance(e, ImportError):
            hint = f" {install_hint}" if install_hint else ""
            error(prog, f"a required package is not installed ({e}).{hint}", verbose)
            return EXIT_FAILURE
        # a library bug, a disk error: still one line; the traceback with -v
        error(prog, f"{type(e).__name__}: {e}", verbose)
        return EXIT_FAILURE
