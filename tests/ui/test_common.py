"""graft_ui/ui/common.py: errors become sentences that name what was wrong."""


def test_a_too_long_path_is_named_in_the_ui():
    import errno

    from graft_ui.ui.common import message_of

    msg = message_of(OSError(errno.ENAMETOOLONG, "File name too long", "m" * 1_000_000))
    assert msg.startswith("the path given is too long (1000000 characters)") and len(msg) < 200
