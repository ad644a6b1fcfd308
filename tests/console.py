"""`prune-search` run in the test's own process, as in a fresh one: logging unconfigured, so that
`main` sends its lines to the stderr the test reads; pytest's own handlers are put back after."""

from __future__ import annotations

import contextlib
import io
import logging

from search.cli import main


def run_main(argv: list[str]) -> int:
    """`main(argv)` with logging as a fresh process has it (for tests that read capsys)."""
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    root.handlers.clear()
    try:
        return main(argv)
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:] = saved
        root.setLevel(level)


def run_captured(argv: list[str]) -> tuple[int, str, str]:
    """`main(argv)` as above, with its stdout and stderr: (exit code, stdout, stderr). The parser's
    own refusals exit as a process would: their code, not an exception."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = run_main(argv)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
    return code, out.getvalue(), err.getvalue()
