"""The package's error classes' roots, and the one policy every command applies to them.

* :class:`KVSmoothError`: every error this package raises on purpose derives from it.
* :class:`UserError` (also a ``ValueError``): a user mistake (an option, a file, a field); its message is one
  line that names what is wrong and the fix. Every command prints it as ``error: <message>`` and exits 2.
* :class:`SessionError` (also a ``RuntimeError``): misuse of a session.
* anything else is a bug of ours: ``error: unexpected ...; please report it`` and exit 1, with the traceback
  when ``--traceback`` is given or ``KVSMOOTH_TRACEBACK=1`` is set (:func:`run_command`).

Kept apart from the rest so every layer can raise them without import cycles.
"""

from __future__ import annotations

import os
import sys
import traceback as _tb
from typing import Callable

__all__ = ["KVSmoothError", "UserError", "SessionError", "run_command", "add_traceback_option", "TRACEBACK_ENV"]

TRACEBACK_ENV = "KVSMOOTH_TRACEBACK"


class KVSmoothError(Exception):
    """Base of every error the package raises on purpose."""


class UserError(KVSmoothError, ValueError):
    """A user mistake; the message is one line naming the option, file or field and the fix."""


class SessionError(KVSmoothError, RuntimeError):
    """Misuse of a session (a second session on one model, an unsupported generation mode...)."""


def add_traceback_option(parser) -> None:
    """``--traceback`` on ``parser`` (an ``argparse`` parser or argument group). The value is only set when given
    (``default=SUPPRESS``), so a subcommand's flag never resets the main command's ``kvsmooth --traceback CMD``;
    read it as ``getattr(args, "traceback", False)`` and pass it to :func:`run_command`."""
    import argparse

    parser.add_argument("--traceback", action="store_true", default=argparse.SUPPRESS,
                        help=f"show the traceback of an unexpected error (also: {TRACEBACK_ENV}=1)")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def run_command(func: Callable[[], int | None], show_traceback: bool = False) -> int:
    """Run a command's body under the error policy and return its exit status.

    ``UserError`` and ``SessionError``: ``error: <one line>`` on stderr, status 2. ``OSError`` with a file name
    (unreadable input, unwritable output): the same, naming the file. ``KeyboardInterrupt``: status 130. A closed
    output pipe (``BrokenPipeError``): status 141, nothing printed.
    Anything else: ``error: unexpected <type>: <message>; this is a bug, please report it`` and status 1; the
    traceback follows with ``show_traceback`` or ``KVSMOOTH_TRACEBACK=1`` (it never replaces the line)."""
    show_traceback = show_traceback or os.environ.get(TRACEBACK_ENV, "") not in ("", "0")
    try:
        status = func()
        sys.stdout.flush()  # here, not at exit: a closed pipe is then seen below
        return 0 if status is None else int(status)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except (UserError, SessionError) as exc:
        print(f"error: {_one_line(exc) or type(exc).__name__}", file=sys.stderr)
        if show_traceback:
            _tb.print_exc()
        return 2
    except BrokenPipeError:  # the reader of our output went away (`kvsmooth plan ... | head`): not an error of ours
        _silence_stdout()
        return 141  # 128 + SIGPIPE, as a shell reports a command a pipe closed on
    except OSError as exc:
        if exc.filename is None:
            return _unexpected(exc, show_traceback)
        print(f"error: {exc.filename}: {exc.strerror or _one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug of ours
        return _unexpected(exc, show_traceback)


def _silence_stdout() -> None:
    """Point stdout at the null device, so the interpreter's final flush does not fail on the closed pipe again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout without a file descriptor (captured): nothing to redirect
        pass


def _unexpected(exc: BaseException, show_traceback: bool) -> int:
    if show_traceback:
        _tb.print_exc()
    first = _one_line(exc)[:300]
    print(f"error: unexpected {type(exc).__name__}: {first}; this is a bug, please report it with the command "
          f"and the traceback ({'above' if show_traceback else f'rerun with --traceback or {TRACEBACK_ENV}=1'})",
          file=sys.stderr)
    return 1
