"""The ci-profile zoo, built once per session (cached under $GRAFT_ZOO_DIR, see tests/conftest.py)."""

import pytest


@pytest.fixture(scope="session")
def ci_zoo():
    from graft_ui.zoo import ensure_zoo

    return ensure_zoo("ci", progress=False)



@pytest.fixture(scope="session")
def tiny_forecast(tmp_path_factory):
    """A fitted forecast (predictors.json) of both kinds for Graft and TIES, fitted on synthetic fusions."""
    from _forecast import write_forecast

    return write_forecast(tmp_path_factory.mktemp("forecast"))
