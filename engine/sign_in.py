"""Whether people must sign in to VisionBoard: one rule for the dashboard, the API and the CLI.

People must sign in once someone can: an enabled account in the store, or the team's identity
provider, configured for Streamlit's st.login by an [auth] section of .streamlit/secrets.toml.
That section counts only when st.login can use it: `redirect_uri` and `cookie_secret`, and a
provider's `client_id`, `client_secret` and `server_metadata_url`, in [auth] itself or in a
named [auth.NAME]. An [auth] without a usable provider is no sign-in (st.login would fail on
it): counted, it would turn the local admin away with nobody able to sign in instead, so
auth_problems() names what it misses for the places that read it to say so.

The dashboard passes its st.secrets; the CLI and the API read the files Streamlit reads for
`visionboard serve` (parsed again only when one changes, so asking costs two stat calls).
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from engine import store

# `visionboard serve` runs Streamlit in the repository, so it reads these, the later winning.
REPOSITORY = Path(__file__).resolve().parent.parent
SHARED_KEYS = ("redirect_uri", "cookie_secret")
PROVIDER_KEYS = ("client_id", "client_secret", "server_metadata_url")
# A sub-table of [auth] that is an option of its unnamed provider, not a provider of its own.
PROVIDER_OPTIONS = ("client_kwargs",)
LOOPBACK_NAMES = ("localhost",)

# Each file's (inode, mtime, size), tables and error; the API's threads share it.
_files: dict[Path, tuple[tuple[int, int, int], dict[str, Any], str | None]] = {}


def secrets_files() -> list[Path]:
    """Streamlit's secrets files as `visionboard serve` starts it, in the order it reads them."""
    return [Path.home() / ".streamlit" / "secrets.toml", REPOSITORY / ".streamlit" / "secrets.toml"]


def _read(path: Path) -> tuple[dict[str, Any], str | None]:
    """A secrets file's tables and why it could not be read (None: it could, or it is absent);
    parsed again only when it changes (its inode, modification time or size)."""
    try:
        info = path.stat()
    except OSError:
        return {}, None
    stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
    cached = _files.get(path)
    if cached and cached[0] == stamp:
        return cached[1], cached[2]
    try:
        data, error = tomllib.loads(path.read_text(encoding="utf-8")), None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        data, error = {}, f"{path} cannot be read ({exc})"
    _files[path] = (stamp, data, error)
    return data, error


def read_secrets(paths: Iterable[Path] | None = None) -> dict[str, Any]:
    """The secrets files' tables merged as Streamlit merges them (a later file's table replaces
    an earlier one's). One file that cannot be read makes them all none, as st.secrets fails
    then and the dashboard reads nothing (secrets_errors says why)."""
    merged: dict[str, Any] = {}
    for path in secrets_files() if paths is None else paths:
        data, error = _read(path)
        if error:
            return {}
        merged.update(data)
    return merged


def secrets_errors(paths: Iterable[Path] | None = None) -> list[str]:
    """Why secrets files that exist cannot be read (not TOML, say)."""
    files = secrets_files() if paths is None else paths
    return [error for error in (_read(path)[1] for path in files) if error]


def _auth(secrets: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """The [auth] section of `secrets` (None: of the secrets files); None when there is none."""
    auth = (read_secrets() if secrets is None else secrets).get("auth")
    if auth is None or isinstance(auth, Mapping):
        return auth
    return {"": auth}  # `auth = "..."`, not a table: a section that configures nothing


def _named(auth: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {
        str(name): section
        for name, section in auth.items()
        if isinstance(section, Mapping) and name not in PROVIDER_OPTIONS
    }


def _missing(section: Mapping[str, Any], keys: tuple[str, ...]) -> list[str]:
    return [key for key in keys if not section.get(key)]


def oidc_providers(secrets: Mapping[str, Any] | None = None) -> list[str | None]:
    """The providers st.login can use, as its argument: None for a complete provider in [auth]
    itself, then each complete [auth.NAME]; empty when sign-in through an identity provider is
    not configured. `secrets`: Streamlit's secrets (the dashboard's st.secrets); None reads
    the secrets files."""
    auth = _auth(secrets)
    if not auth or _missing(auth, SHARED_KEYS):
        return []
    providers: list[str | None] = [] if _missing(auth, PROVIDER_KEYS) else [None]
    for name, section in _named(auth).items():
        if "_" not in name and not _missing(section, PROVIDER_KEYS):
            providers.append(name)
    return providers


def auth_problems(secrets: Mapping[str, Any] | None = None) -> list[str]:
    """What an [auth] section misses for st.login, each naming the section and its missing
    keys; empty when it is complete or absent. `secrets` as oidc_providers takes it."""
    auth = _auth(secrets)
    if auth is None:
        return []
    problems = []
    shared = _missing(auth, SHARED_KEYS)
    if shared:
        problems.append(f"[auth] misses {', '.join(shared)}")
    named = _named(auth)
    for name, section in named.items():
        missing = _missing(section, PROVIDER_KEYS)
        if "_" in name:
            problems.append(f"[auth.{name}]: st.login takes no provider name with an underscore")
        elif missing:
            problems.append(f"[auth.{name}] misses {', '.join(missing)}")
    unnamed = _missing(auth, PROVIDER_KEYS)
    if not named and unnamed:  # no provider at all
        problems.append(f"[auth] (or a provider's [auth.NAME]) misses {', '.join(unnamed)}")
    elif named and 0 < len(unnamed) < len(PROVIDER_KEYS):  # half a provider in [auth] itself
        problems.append(f"[auth] misses {', '.join(unnamed)} of its unnamed provider")
    return problems


def oidc_problem(secrets: Mapping[str, Any] | None = None) -> str | None:
    """One sentence on what the [auth] section misses (and, for the files, which of them cannot
    be read), for the places that read it; None when there is nothing to say."""
    problems = auth_problems(secrets)
    if secrets is None:
        problems = secrets_errors() + problems
    if not problems:
        return None
    off = "" if oidc_providers(secrets) else "sign-in through the identity provider is off: "
    return f"{off}{'; '.join(problems)} (.streamlit/secrets.toml, as Streamlit's st.login reads it)"


def oidc_configured(secrets: Mapping[str, Any] | None = None) -> bool:
    """Whether people can sign in through the team's identity provider (st.login)."""
    return bool(oidc_providers(secrets))


def sign_in_configured(db, secrets: Mapping[str, Any] | None = None) -> bool:
    """Whether people must sign in: any enabled account, or a usable identity provider. With
    neither, whoever uses VisionBoard from this machine is its single local admin."""
    return oidc_configured(secrets) or store.count_users(db) > 0


def is_loopback_host(host: str) -> bool:
    """Whether a host (a name or an address, maybe in brackets, maybe with a port: a --host or
    a Host header) names only this machine: localhost, 127.x.x.x, ::1."""
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:8501
        host, bracket, port = host[1:].partition("]")
        if not bracket or (port and not (port[0] == ":" and port[1:].isdigit())):
            return False  # "[::1]evil.com" names another host
    elif host.count(":") == 1:  # localhost:8501
        host = host.partition(":")[0]
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name of this machine on the network, or 0.0.0.0-like
