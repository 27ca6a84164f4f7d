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
EXIT_STDOUT_CLOSED = 141  # the reader of stdout went away (`sdcli ... | head -1`), as SIGPIPE's 128 + 13


class SdcliError(Exception):
    """An error with a one-line message meant for the user; ``summary``: what the run had done by then (for
    --json), if it had started."""

    exit_code = EXIT_FAILURE
    summary = None


class UsageError(SdcliError):
    exit_code = EXIT_USAGE


class ModelUnavailable(SdcliError):
    exit_code = EXIT_MODEL


class OutdirBusy(SdcliError):
    exit_code = EXIT_BUSY


class StdoutClosed(SdcliError):
    """The reader of stdout went away: not an error to report, only an exit code."""

    exit_code = EXIT_STDOUT_CLOSED


def first_line(error: BaseException | str, limit: int = 300) -> str:
    """The first non-blank line of an error (libraries raise multi-line texts), at most ``limit`` characters;
    the exception's class name if it has no text."""
    text = str(error)
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    if not line and isinstance(error, BaseException):
        line = type(error).__name__
    return line[:limit]


def one_line(text: str) -> str:
    """A multi-line message joined into one line (what sdcli prints after ``sdcli: error:``)."""
    return " ".join(part.strip() for part in text.strip().splitlines() if part.strip())


def suggest(key: str, choices) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or nothing."""
    import difflib

    close = difflib.get_close_matches(key, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def textsafe(value):
    """``value`` with every string encodable as UTF-8: bytes that were not UTF-8 (file names, argv, carried by
    Python as lone surrogates) are written as ``\\xNN`` instead of failing the write of an image or a line."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
            return value
        except UnicodeEncodeError:
            return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if isinstance(value, dict):
        return {textsafe(k): textsafe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [textsafe(v) for v in value]
    return value
