import pytest

from engine import store


@pytest.fixture(autouse=True, scope="session")
def data_roots(tmp_path_factory):
    """Tests write their datasets under pytest's temporary folder: it is a data root, as the
    admin lists the team's data folders (engine/data_roots.py). Session-wide, so module-scoped
    fixtures that train on a dataset see it too; tests of the confinement set their own."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VISIONBOARD_DATA_ROOTS", str(tmp_path_factory.getbasetemp()))
        yield


class LocalBrowser:
    """The connection of a browser on the server itself, opened at localhost, no proxy."""

    remote_ip = "127.0.0.1"
    headers = [("Host", "localhost:8501")]


@pytest.fixture(autouse=True)
def local_browser(monkeypatch):
    """AppTest has no browser connection, which the dashboard's single-user mode refuses (it
    serves only a browser it can prove local: dashboard.auth.not_local_reason); tests run as
    a local browser. Tests of the check call not_local_reason with their own connections."""
    from dashboard import auth

    monkeypatch.setattr(auth, "client_context", LocalBrowser)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh data directory, also set as $VISIONBOARD_HOME for code that reads it."""
    path = tmp_path / "home"
    path.mkdir()
    monkeypatch.setenv("VISIONBOARD_HOME", str(path))
    return path


@pytest.fixture
def db(home):
    database = store.connect(home)
    yield database
    database.conn.close()
