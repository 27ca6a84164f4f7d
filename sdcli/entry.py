"""The console script's entry point: as little as possible runs before closed standard streams and an early
Ctrl-C are taken care of (the CLI itself is imported after)."""

from __future__ import annotations

import os
import sys


def run() -> None:
    _reopen_closed_standard_fds()
    try:
        from .cli import run as cli_run
    except KeyboardInterrupt:  # Ctrl-C while the CLI is being imported
        print("sdcli: interrupted", file=sys.stderr)
        sys.exit(130)
    cli_run()


def _reopen_closed_standard_fds() -> None:
    """Started with ``2>&-`` (or 1, or 0 closed): put /dev/null there. Otherwise the next file sdcli opens
    would get that descriptor, and whatever writes to "stderr" would write into it (a manifest, an image)."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            opened = os.open(os.devnull, os.O_RDWR)  # the lowest free descriptor: this one
            if opened != fd:
                os.dup2(opened, fd)
                os.close(opened)
    for name, fd, mode in (("stdin", 0, "r"), ("stdout", 1, "w"), ("stderr", 2, "w")):
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, mode, closefd=False))
