"""The exit-status rule of every command in gpt2_apps (`gpt2 ...`, `gpt2-verify`, `gpt2-convert`).

0 success; 2 usage or bad input (argparse errors, missing or corrupt files, a value out of range: `ValueError`,
`FileNotFoundError`, ...); 1 any other failure (a backend or optional dependency not installed, a failed check, a
library error, a full disk: "No space left on device writing PATH"); 130 interrupted (Ctrl-C); 143 terminated
(SIGTERM: `run_command` turns it into `gpt2_core.hub.Terminated`, so the same cleanup as Ctrl-C runs and no temporary
directory is left). An error is one line on stderr, `PROG: error: message`; the traceback only with -v.
"""

from __future__ import annotations

import sys
import traceback
from typing import Callable

from gpt2_core.hub import DiskFullError, Terminated, sigterm_raises

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


def run_command(prog: str, fn: Callable[[], int | None], verbose: bool = False, install_hint: str = "") -> int:
    """Run `fn` and map what it raises to an exit status (see the module docstring). SystemExit passes through.
    SIGTERM while `fn` runs raises `Terminated` in it (`gpt2_core.hub.sigterm_raises`)."""
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
    except UsageError as e:
        error(prog, str(e), verbose)
        return EXIT_USAGE
    except BAD_INPUT as e:
        error(prog, str(e), verbose)
        return EXIT_USAGE
    except NotInstalledError as e:
        error(prog, str(e), verbose)
        return EXIT_FAILURE
    except DiskFullError as e:
        error(prog, str(e), verbose)
        return EXIT_FAILURE
    except ImportError as e:
        error(prog, f"a required package is not installed ({e}).{' ' + install_hint if install_hint else ''}", verbose)
        return EXIT_FAILURE
    except Exception as e:  # a library bug, a disk error: still one line; the traceback with -v
        error(prog, f"{type(e).__name__}: {e}", verbose)
        return EXIT_FAILURE
