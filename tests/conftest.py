import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from engine import database, store


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
    """A fresh data directory, also set as $VISIONBOARD_HOME for code that reads it; its
    database the SQLite file in it (whatever $VISIONBOARD_DB the shell or a CLI call set)."""
    path = tmp_path / "home"
    path.mkdir()
    monkeypatch.setenv("VISIONBOARD_HOME", str(path))
    # Set, then removed: so the value before is put back after the test, and a `--db` that a
    # CLI call of the test wrote into os.environ goes with it (delenv of an unset one would
    # remember nothing).
    for name in (database.ENV, "VISIONBOARD_HOST"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    return path


@pytest.fixture
def db(home):
    database = store.connect(home)
    yield database
    database.conn.close()


# -- PostgreSQL: one throw-away cluster per session, one fresh schema per test ----------------


def postgresql_bin() -> Path | None:
    """The folder of initdb and pg_ctl: on PATH, else Debian's /usr/lib/postgresql/N/bin."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    return versions[-1].parent if versions else None


@pytest.fixture(scope="session")
def postgresql_server():
    """A PostgreSQL cluster in a temporary folder, reached only through a Unix socket there
    (no TCP port), durability off (it is thrown away). Its URL, database `postgres`. initdb
    refuses root: as root it runs as the `postgres` account (Debian's package makes it)."""
    bin_dir = postgresql_bin()
    if bin_dir is None:
        pytest.fail("PostgreSQL is not installed (no initdb): `make test` installs Debian's")
    root = Path(tempfile.mkdtemp(prefix="visionboard-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        account = "postgres" if _account_exists("postgres") else "nobody"
        entry = pwd.getpwnam(account)
        os.chown(root, entry.pw_uid, entry.pw_gid)
        as_user = ["runuser", "-u", account, "--"]
    data = root / "data"

    def pg(*args: str) -> None:
        subprocess.run([*as_user, *args], check=True, capture_output=True, timeout=120)

    settings = (
        f"-c listen_addresses='' -c unix_socket_directories={root} -c fsync=off "
        "-c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
    )
    try:
        pg(str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
           "--no-sync", "-E", "UTF8", "--no-locale")  # fmt: skip
        pg(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w",
           "-o", settings, "start")  # fmt: skip
    except subprocess.CalledProcessError as exc:
        log = (root / "log").read_text() if (root / "log").exists() else ""
        pytest.fail(f"PostgreSQL did not start: {exc.stderr.decode()}{log}")
    yield f"postgresql://postgres@/postgres?host={root}"
    subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                    "stop"], capture_output=True, timeout=60)  # fmt: skip
    shutil.rmtree(root, ignore_errors=True)


def _account_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


_schemas = itertools.count(1)


@pytest.fixture
def postgresql_url(postgresql_server):
    """The URL of an empty PostgreSQL database of this test's own (a fresh schema)."""
    import psycopg

    schema = f"test_{os.getpid()}_{next(_schemas)}"
    with psycopg.connect(postgresql_server, autocommit=True) as conn:
        conn.execute(f"create schema {schema}")
    return f"{postgresql_server}&options=-csearch_path%3D{schema}"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_db(request, home, monkeypatch):
    """A fresh store on SQLite and then on PostgreSQL (set as $VISIONBOARD_DB, so the code
    under test and the processes it starts connect to it too): `db` of the store's tests."""
    if request.param == "postgresql":
        monkeypatch.setenv(database.ENV, request.getfixturevalue("postgresql_url"))
    else:
        monkeypatch.delenv(database.ENV, raising=False)
    database_ = store.connect(home)
    yield database_
    database_.conn.close()
