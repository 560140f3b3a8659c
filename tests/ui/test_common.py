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
