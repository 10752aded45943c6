import pytest

from engine import store


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
