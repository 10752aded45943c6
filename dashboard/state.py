"""Small helpers the pages share: the database connection, the current user, run formatting.

The connection is cached per data directory with st.cache_resource (one per server process,
shared by every session; engine.store opens it with check_same_thread=False). Everything
else here is plain Python over run rows so the pages stay thin.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import streamlit as st

from dashboard import auth
from engine import store
from engine.run_folder import RunFolder

# -- routing ------------------------------------------------------------------------------------


ROUTED = "vb_routed"
# Confidence sliders start at a run's threshold exactly (a best-F1 0.4171 rounded up to 0.42
# hid every detection at it): a fine step, and a format that shows the value unrounded.
THRESHOLD_STEP = 0.0001
THRESHOLD_FORMAT = "%.4f"


def draw_frame() -> None:
    """What every page shares: page config, database, sample datasets, who is signed in."""
    st.set_page_config(page_title="VisionBoard", page_icon=":material/visibility:", layout="wide")
    get_db()
    ensure_samples()
    auth.require_user(get_db())  # the sign-in page, and a stop, for a signed-out browser
    st.sidebar.caption(f"Data directory: `{home()}`")


def mark_routed() -> None:
    """app.py calls this after drawing the frame, just before running the page."""
    st.session_state[ROUTED] = True


def page_setup() -> None:
    """First call of every page: make sure it runs inside app.py's router and frame.

    Streamlit also reads dashboard/pages/ as an old-style pages folder: until some session
    has run app.py, a browser that opens a page URL first (/run?run=3) gets that page run on
    its own, without the router. Then switch the process to st.navigation and rerun, which
    goes through app.py to the same page (same url path). AppTest resets that switch before
    every run, so there the page draws the frame itself instead.
    """
    if st.session_state.pop(ROUTED, False):
        return
    from streamlit import config
    from streamlit.runtime.pages_manager import PagesManager

    if not config.get_option("global.appTest"):
        PagesManager.uses_pages_directory = False
        st.rerun()
    draw_frame()


# -- data directory and database --------------------------------------------------------------


def home() -> Path:
    """The data directory the dashboard serves: $VISIONBOARD_HOME, else ./runs."""
    return store.home_dir()


@st.cache_resource(show_spinner=False)
def _connect(home_path: str):
    return store.connect(home_path)


def get_db():
    """The database of the current data directory (one cached connection per directory)."""
    return _connect(str(home()))


@st.cache_resource(show_spinner="Preparing the sample datasets…")
def _ensure_samples(home_path: str) -> list[str]:
    from engine.sample_datasets import ensure_samples

    return ensure_samples(_connect(home_path), Path(home_path))


def ensure_samples() -> list[str]:
    """Write and register the sample datasets once per data directory (newcomers see "digits").

    VISIONBOARD_SAMPLES=0 turns this off (the dashboard tests seed their own data).
    """
    if os.environ.get("VISIONBOARD_SAMPLES", "1") == "0":
        return []
    try:
        return _ensure_samples(str(home()))
    except Exception as exc:  # a broken sample must not take the whole dashboard down
        st.sidebar.warning(f"Could not prepare the sample datasets: {exc}")
        return []


# -- who is using the dashboard ----------------------------------------------------------------


def current_user() -> dict[str, Any]:
    """Who uses this browser session: {"username", "role", "source", ...} (dashboard.auth).
    draw_frame stops every run of a signed-out browser at the sign-in page, so pages always
    get a user."""
    user = auth.current_user(get_db())
    if user is None:  # a page drawn without the frame: nobody may act
        st.stop()
    return user


# -- run rows ----------------------------------------------------------------------------------


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        return None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


def duration_seconds(run: dict[str, Any], now: datetime | None = None) -> float | None:
    """Seconds from start to finish (or to now while running); None before it starts."""
    start = parse_time(run.get("started_at"))
    if start is None:
        return None
    end = parse_time(run.get("finished_at"))
    if end is None:
        if run.get("status") != "running":
            return None
        end = now or parse_time(store.now())  # the database's clock, as the stamps'
    return max(0.0, (end - start).total_seconds())


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def format_time(text: str | None) -> str:
    stamp = parse_time(text)
    return stamp.astimezone().strftime("%Y-%m-%d %H:%M") if stamp else ""


def progress(run: dict[str, Any]) -> tuple[int, int]:
    """(epoch, epochs) from the summary, falling back on the config's epoch limit."""
    summary = run.get("summary") or {}
    config = run.get("config") or {}
    done = summary.get("epochs_trained", summary.get("epoch", 0)) or 0
    if run.get("status") == "running":
        done = summary.get("epoch", done) or 0
    total = summary.get("epochs") or config.get("epochs") or 0
    return int(done), int(total)


def step_progress(run: dict[str, Any]) -> tuple[int, int, int] | None:
    """(epoch under way, its step, steps per epoch) of a running run once the trainer has
    flushed a step (engine.metric_log), else None."""
    summary = run.get("summary") or {}
    per_epoch, step = summary.get("steps_per_epoch"), summary.get("epoch_step")
    if run.get("status") != "running" or not per_epoch or not step:
        return None
    return int(summary.get("current_epoch") or 1), int(step), int(per_epoch)


def progress_share(run: dict[str, Any]) -> float:
    """The share of the epoch limit done, counting the steps of the epoch under way."""
    epoch, epochs = progress(run)
    if not epochs:
        return 0.0
    steps = step_progress(run)
    if steps:
        current, step, per_epoch = steps
        return min(1.0, ((current - 1) * per_epoch + step) / (epochs * per_epoch))
    return min(1.0, epoch / epochs)


def progress_text(run: dict[str, Any]) -> str:
    """ "2 / 3", or "1 / 3 · step 5 / 40" while an epoch is under way."""
    epoch, epochs = progress(run)
    if not epochs:
        return ""
    steps = step_progress(run)
    if steps:
        return f"{steps[0]} / {epochs} · step {steps[1]} / {steps[2]}"
    return f"{epoch} / {epochs}"


def metric_label(run: dict[str, Any]) -> str:
    summary = run.get("summary") or {}
    config = run.get("config") or {}
    return str(summary.get("metric") or config.get("metric") or "")


def run_choices(db, limit: int = 500) -> dict[int, str]:
    """{id: "#id name (status)"} of the newest runs, for select boxes (no JSON decoding)."""
    return {i: f"#{i} {name} ({status})" for i, name, status in store.run_labels(db, limit)}


def query_run_ids(key: str) -> list[int]:
    """Run ids from a query parameter: ?run=3 or ?runs=1,2,5."""
    raw = st.query_params.get_all(key)
    ids = []
    for item in raw:
        for part in str(item).split(","):
            part = part.strip()
            if part.isdigit():
                ids.append(int(part))
    return ids


# -- run folder ---------------------------------------------------------------------------------


def run_folder(run_id: int) -> RunFolder:
    """The run's files in the data directory the dashboard serves."""
    return RunFolder(home(), run_id)


def log_tail(path: Path, lines: int = 60, max_bytes: int = 64_000) -> str:
    """The last lines of a log, reading only its end (logs of long runs grow large)."""
    if not path.is_file():
        return ""
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        handle.seek(max(0, size - max_bytes))
        text = handle.read().decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


@st.cache_data(show_spinner=False, max_entries=32)
def _read_json(path: str, mtime: float) -> Any:
    return json.loads(Path(path).read_text())


def read_json(path: Path) -> Any | None:
    """A JSON file of a run folder, cached until the file changes; None when absent."""
    if not path.is_file():
        return None
    return _read_json(str(path), path.stat().st_mtime)


# -- datasets ------------------------------------------------------------------------------------


@st.cache_resource(max_entries=4, show_spinner="Reading the dataset…")
def load_splits(
    path: str, task: str | None, fmt: str = "auto", test_ratio: float = 0.2, seed: int = 0
):
    """engine.data.load_splits cached per dataset and split settings (it lists every file)."""
    from engine.data import load_splits as load

    return load(path, task, fmt=fmt, test_ratio=test_ratio, seed=seed)
