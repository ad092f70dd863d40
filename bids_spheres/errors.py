"""Errors a user can cause, each mapped to a BIDS-App exit code.

Every exception raised for a problem in the user's input carries a message
that names the file or value at fault and the fix; the CLI prints that message
on one line and exits with :attr:`BidsSpheresError.exit_code`.

Exit codes follow the BIDS-Apps execution spec and ``sysexits.h``:
1 some runs failed, 16 validation, 17 unknown analysis level, 64 usage, 65 bad
data, 66 missing input (also: the selection matched nothing), 70 internal error
(a bug: an unexpected exception, never a problem of the input), 73 cannot
create output, 128 + N killed by signal N (129 SIGHUP, 130 SIGINT, 143
SIGTERM).
"""

from __future__ import annotations

import signal

#: Exit code of an unexpected exception (``sysexits.h`` EX_SOFTWARE), distinct
#: from 1 (some runs failed).
INTERNAL_ERROR_EXIT_CODE = 70


class BidsSpheresError(Exception):
    """Base class of the errors a user can cause (exit code 1)."""

    exit_code: int = 1


class UsageError(BidsSpheresError, ValueError):
    """A command-line argument or option value is invalid (exit 64)."""

    exit_code = 64


class DataError(BidsSpheresError, ValueError):
    """An input file exists but its content is unusable (exit 65)."""

    exit_code = 65


class MissingInputError(BidsSpheresError, FileNotFoundError):
    """A required input file or directory does not exist (exit 66)."""

    exit_code = 66


class NothingSelectedError(MissingInputError):
    """The selection matched nothing in the input (exit 66, as any missing input).

    One kind, one code: an unknown participant, session, task or run, a space
    (cohort, resolution) the dataset lacks, filters that match no run, or a
    group level with no output for the selected runs.
    """


class ValidationError(BidsSpheresError):
    """The input dataset failed BIDS validation (exit 16)."""

    exit_code = 16


class OutputError(BidsSpheresError, OSError):
    """The output or work directory cannot be created or written (exit 73)."""

    exit_code = 73


class OutputUnavailableError(OutputError):
    """The output takes no more writes: disk full, over quota, read-only, file-size limit (73).

    Unlike other output errors (a conflicting file, a symlinked folder) it is no
    fault of the run that met it: the participant level stops instead of failing
    every remaining run the same way.
    """


class Terminated(BaseException):
    """The process received SIGTERM/SIGHUP/SIGINT (exit code 128 + the signal number).

    A ``BaseException``, so that no ``except Exception`` on the way up turns it
    into a failed run: it unwinds to the CLI, which stops the workers.
    """

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        self.exit_code = 128 + self.signum
        try:
            name = signal.Signals(self.signum).name
        except ValueError:
            name = f"signal {self.signum}"
        super().__init__(f"terminated by {name}")


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line (whitespace collapsed), or its type name."""
    return " ".join(str(exc).split()) or type(exc).__name__
