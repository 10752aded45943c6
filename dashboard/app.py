"""Router of the dashboard: `streamlit run dashboard/app.py` (or `visionboard serve`).

Draws the shared sidebar (who is signed in) and hands over to the chosen page; a signed-out
browser gets the sign-in page instead (dashboard.auth), at the address it asked for.
"""

import sys
from pathlib import Path

import streamlit as st

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    # `streamlit run dashboard/app.py` puts dashboard/ on the path, not the repository.
    sys.path.insert(0, str(ROOT))

from dashboard import auth, state  # noqa: E402
from engine import store  # noqa: E402

PAGES = Path(__file__).resolve().parent / "pages"


RUNS = st.Page(PAGES / "runs.py", title="Runs", icon=":material/list:", url_path="runs")


def open_runs() -> None:
    """The root URL shows the runs table at its own address.

    A default page is served at "/" only, so with Runs as the default, /runs (a bookmark, a
    link in a message, a reload after switching pages) answered "Page not found".
    """
    st.switch_page(RUNS, query_params=st.query_params.to_dict())


pages = [
    st.Page(open_runs, title="Home", url_path="home", default=True, visibility="hidden"),
    st.Page(PAGES / "new_run.py", title="New run", icon=":material/add_circle:"),
    RUNS,
    st.Page(PAGES / "run.py", title="Run", icon=":material/monitoring:"),
    st.Page(PAGES / "compare.py", title="Compare", icon=":material/compare_arrows:"),
    st.Page(PAGES / "datasets.py", title="Datasets", icon=":material/folder_open:"),
    st.Page(
        PAGES / "predict.py", title="Predict", icon=":material/image_search:", url_path="predict"
    ),
    st.Page(PAGES / "tokens.py", title="API tokens", icon=":material/key:", url_path="tokens"),
]

# Who is signed in is worked out once a run, here: the frame and the pages ask current_user.
with auth.run_user(state.get_db()) as user:
    # Admins see the Admin page; for anyone else its address answers "admins only" (the page
    # checks).
    pages.append(
        st.Page(
            PAGES / "admin.py",
            title="Admin",
            icon=":material/admin_panel_settings:",
            url_path="admin",
            visibility="visible" if store.may(user, "manage_users") else "hidden",
        )
    )
    # The pages are not listed before sign-in; the address asked for is kept, and opens after.
    page = st.navigation(pages, position="hidden" if user is None else "sidebar")
    state.draw_frame()
    state.mark_routed()
    page.run()
