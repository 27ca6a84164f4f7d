"""Errors a user can cause or meet, each with its exit code (README: "Exit codes").

Modules raise these; ``cli.py`` is the one place that turns them into a line on stderr and an exit code.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1  # a runtime failure: some images failed
EXIT_USAGE = 2  # bad flag, config, prompt file, image, size ...
EXIT_MODEL = 3  # model (or safety checker) unavailable
EXIT_BUSY = 4  # another --resume run holds the outdir
EXIT_INTERRUPTED = 130


class SdcliError(Exception):
    """An error with a one-line message meant for the user."""

    exit_code = EXIT_FAILURE


class UsageError(SdcliError):
    exit_code = EXIT_USAGE


class ModelUnavailable(SdcliError):
    exit_code = EXIT_MODEL


class OutdirBusy(SdcliError):
    exit_code = EXIT_BUSY
