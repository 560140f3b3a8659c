"""graft_ui/ui/common.py: errors become sentences that name what was wrong."""


def test_a_too_long_path_is_named_in_the_ui():
    import errno

    from graft_ui.ui.common import message_of

    msg = message_of(OSError(errno.ENAMETOOLONG, "File name too long", "m" * 1_000_000))
    assert msg.startswith("the path given is too long (1000000 characters)") and len(msg) < 200


def test_binding_beyond_loopback_without_auth_warns():
    from graft_ui.ui.app import exposure_warning

    assert exposure_warning("127.0.0.1", None) is None and exposure_warning("::1", None) is None
    assert exposure_warning("0.0.0.0", ("u", "p")) is None
    assert "without --auth" in exposure_warning("0.0.0.0", None)
    assert "without --auth" in exposure_warning("studio.example.org", None)


def test_stop_is_per_tab_and_only_stops_what_is_pending():
    from types import SimpleNamespace

    from graft_ui.ui.context import AppContext

    ctx = AppContext(studio=None)
    req = SimpleNamespace(session_hash="s1")
    assert ctx.stop(req, "chat") is False  # nothing sent: nothing to stop
    armed = ctx.arm(req, "chat")  # sent, still waiting in the queue
    assert ctx.stop(req, "arena") is False and not armed.is_set()  # Arena's Stop leaves Chat alone
    assert ctx.stop(req, "chat") is True
    assert ctx.new_stop(req, "chat") is armed and armed.is_set()  # seen when the queued request starts
    ctx.finish(req, "chat", armed)
    assert ctx.stop(req, "chat") is False  # answers done: a later Stop changes nothing
