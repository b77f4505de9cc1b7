"""User-facing errors.

Anything the user can fix (bad file, missing column, wrong option) raises
:class:`InputError` with one sentence naming the file and the fix. The CLI prints
that sentence and exits with status 2, without a traceback.
"""

from __future__ import annotations


class InputError(Exception):
    """Bad input the user can fix; the message is one sentence naming file and fix."""

    exit_code = 2


class OutputError(InputError):
    """A job's output failed its checks (NaN/Inf, wrong size, empty table); the job ended FAILURE.

    A subclass of :class:`InputError` so the CLI prints its one sentence and exits with status 2.
    """
