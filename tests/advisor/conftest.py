"""The ci-profile zoo, built once per session (cached under $GRAFT_ZOO_DIR, see tests/conftest.py)."""

import pytest


@pytest.fixture(scope="session")
def ci_zoo():
    from graft_ui.zoo import ensure_zoo

    return ensure_zoo("ci", progress=False)
