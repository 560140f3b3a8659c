"""graft_ui/logs.py: a 1 MB user value is not echoed whole into the log."""

import io
import logging

from graft_ui.logs import ShortenValues


def test_long_values_and_tracebacks_are_shortened():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ShortenValues())
    log = logging.getLogger("graft_ui.test_logs")
    log.addHandler(handler)
    try:
        log.warning("refused manifest path %s", "x" * 1_000_000)
        try:
            raise ValueError("y" * 1_000_000)
        except ValueError:
            log.exception("callback failed")
    finally:
        log.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert max(len(line) for line in lines) < 1200
    assert "(1000000 characters)" in lines[0]
