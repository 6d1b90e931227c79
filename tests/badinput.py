"""Running the ``bench`` command line in-process on bad input, and what a clean refusal looks like."""

from __future__ import annotations

import contextlib
import io
import traceback

from bench.cli import main


def cli(argv: list[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``bench ARGV``; an escaping exception fails with its traceback."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse refusing a flag
            code = e.code if isinstance(e.code, int) else 2
        except BaseException:  # noqa: BLE001 - the point of the helper
            raise AssertionError(f"bench {' '.join(argv)[:300]} raised:\n{traceback.format_exc()}") from None
    return code, out.getvalue(), err.getvalue()


def refused(argv: list[str], *needles: str, lines: int | None = 1) -> str:
    """Assert ``bench ARGV`` exits 2 with ``lines`` ``error:`` lines (any number: ``None``)
    holding every needle and no traceback; returns stderr."""
    code, out, err = cli(argv)
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2, (code, out[-500:], err[-2000:])
    assert "Traceback" not in err, err
    assert errors, err
    if lines is not None:
        assert len(errors) == lines, err
    assert all(len(line) <= 2100 for line in errors), [len(line) for line in errors]
    for needle in needles:
        assert needle in err, (needle, err)
    return err
