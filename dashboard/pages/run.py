"""One run: status, live curves, config, log, reports and export. Open with ?run=ID.

The live part is a fragment that reruns every 2 s while the run is queued or running, and
stops once it is finished (it triggers one full rerun when the status changes).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import streamlit as st

from dashboard import charts, images, reports, state
from engine import store
from engine.choices import EXPORT_FORMATS as ALL_EXPORT_FORMATS
from engine.run_folder import download_name

state.page_setup()

ACTIVE = ("queued", "running")
BADGES = {
    "queued": ":gray[:material/schedule:] queued",
    "running": ":blue[:material/directions_run:] running",
    "completed": ":green[:material/check_circle:] completed",
    "failed": ":red[:material/error:] failed",
    "cancelled": ":orange[:material/cancel:] cancelled",
    store.ORPHANED: ":orange[:material/link_off:] running, worker gone",
}


# -- actions (button callbacks) ------------------------------------------------------------


# The buttons shown are store.allowed_actions(run, user); the run may have moved on since the
# page was drawn (or the user's role changed), so a refusal is shown, not raised.
REFUSALS = (store.RunNotFound, store.RunStateError, store.PermissionDenied)


def cancel(run_id: int) -> None:
    try:
        store.request_cancel(state.get_db(), run_id, by=state.current_user())
    except REFUSALS as exc:
        st.toast(str(exc))


def resume(run_id: int) -> None:
    try:
        store.resume_run(state.get_db(), run_id, by=state.current_user())
    except REFUSALS as exc:
        st.toast(str(exc))


def rerun(run_id: int) -> None:
    try:
        new_id = store.queue_rerun(state.get_db(), run_id, by=state.current_user())
    except REFUSALS as exc:
        st.toast(str(exc))
        return
    st.session_state["run_pick"] = new_id
    st.query_params["run"] = str(new_id)


def pick_run(choices: dict[int, str]) -> int | None:
    """The run to show: ?run=ID, else the last one opened, else the newest."""
    ss = st.session_state
    wanted = state.query_run_ids("run")
    if wanted:
        ss["run_pick"] = wanted[0]
    elif ss.get("run_pick") is None and ss.get("run_id") is not None:
        ss["run_pick"] = ss["run_id"]
    if ss.get("run_pick") not in choices:
        if ss.get("run_pick") is not None and store.get_run(state.get_db(), ss["run_pick"]):
            choices[ss["run_pick"]] = f"#{ss['run_pick']}"
        elif choices:
            ss["run_pick"] = next(iter(choices))
        else:
            return None

    def on_pick() -> None:
        st.query_params["run"] = str(ss["run_pick"])

    st.selectbox("Run", list(choices), key="run_pick", format_func=choices.get, on_change=on_pick)
    st.query_params["run"] = str(ss["run_pick"])
    ss["run_id"] = ss["run_pick"]
    return ss["run_pick"]


# -- live part -----------------------------------------------------------------------------


def draw_progress(run: dict[str, Any]) -> None:
    summary = run["summary"] or {}
    config = run["config"] or {}
    epoch, epochs = state.progress(run)
    steps = state.step_progress(run)  # from the first flushed step (engine.metric_log)
    if epochs:
        text = f"Epoch {epoch} of {epochs}"
        if steps:
            text = f"Epoch {steps[0]} of {epochs} · step {steps[1]} of {steps[2]}"
        st.progress(state.progress_share(run), text=text)
    cols = st.columns(5)
    metric = state.metric_label(run)
    best = summary.get("best_metric")
    cols[0].metric(
        f"Best {metric}" if metric else "Best metric",
        "—" if best is None else f"{best:.4f}",
        help=f"The {summary.get('eval_split') or 'test'}-split metric at the best epoch, the one "
        "whose weights are saved.",
    )
    cols[1].metric("Best epoch", summary.get("best_epoch") or "—")
    patience = config.get("early_stopping_patience")
    since = summary.get("epochs_since_best")
    if config.get("early_stopping") and patience:
        since_text = f"{since if since is not None else 0} / {patience}"
    else:
        since_text = "—" if since is None else str(since)
    cols[2].metric(
        "Epochs since best",
        since_text,
        help="Early stopping ends the run when this reaches the patience.",
    )
    eta = summary.get("eta_seconds")
    if eta is not None and summary.get("eta_at"):
        # Counted down between the trainer's flushes (a slow step would freeze it otherwise).
        eta = max(0.0, eta - max(0.0, time.time() - summary["eta_at"]))
    elapsed = state.format_duration(state.duration_seconds(run)) or "—"
    if run["status"] == "running" and eta is not None:
        cols[3].metric("ETA", state.format_duration(eta), help=f"Running for {elapsed}.")
    else:
        # Before the trainer's first estimate, the time so far: labelled as such, not as ETA.
        cols[3].metric("Elapsed" if run["status"] == "running" else "Duration", elapsed)
    speed = summary.get("images_per_second")
    cols[4].metric("Images / s", "—" if speed is None else f"{speed:.1f}")
    if run.get("cancel_requested") and run["status"] == "running":
        st.info("Cancel requested: the run stops at the end of the current step.")
    if summary.get("stop_reason"):
        st.caption(
            f"Stopped: **{summary['stop_reason']}** after {summary.get('epochs_trained', epoch)} "
            f"epoch(s); best epoch {summary.get('best_epoch', '—')}."
        )


def draw_charts(run: dict[str, Any]) -> None:
    db = state.get_db()
    rows = store.get_metrics(db, run["id"])
    if not rows and run["status"] == "queued":
        draw_queue_position(run)
        return
    if not rows:
        st.info("No metrics yet: they appear after the first steps.")
        return
    summary = run["summary"] or {}
    config = run["config"] or {}
    x = st.session_state.get("run_x", "epoch")
    left, right = st.columns(2)
    split = summary.get("eval_split") or "test"  # the split behind the test_* rows
    left.plotly_chart(charts.loss_figure(rows, x=x, split=split), key="chart_loss")
    right.plotly_chart(
        charts.metric_figure(
            rows, state.metric_label(run), summary.get("best_epoch"), x=x, split=split
        ),
        key="chart_metric",
    )
    left.plotly_chart(
        charts.lr_figure(
            rows, summary.get("steps_per_epoch"), bool(config.get("warmup")), x="step"
        ),
        key="chart_lr",
    )
    with right:
        draw_log(run, expanded=False)


def draw_queue_position(run: dict[str, Any]) -> None:
    """A queued run waits for a worker: say whether one is there and what is ahead."""
    if run.get("on_host") and not store.worker_running(state.get_db(), None, run["on_host"]):
        st.warning(
            f"Queued for host **{run['on_host']}**, but no worker runs there, so nothing will "
            f"start it. Start one there with `visionboard worker` (with the same data directory "
            "and database), or cancel it and queue it again for any host.",
            icon=":material/warning:",
        )
        return
    if not store.worker_running(state.get_db(), run["id"]):
        st.warning(
            "Queued, but no worker serves this data directory, so nothing will start it. "
            f"Start one with `visionboard worker --home {state.home()}` (or `visionboard "
            "serve`, which runs the dashboard and a worker together).",
            icon=":material/warning:",
        )
        return
    ahead = store.runs_ahead(state.get_db(), run["id"])
    st.info(
        f"Queued: {ahead} run(s) running or queued before it. It starts when a worker is free."
        if ahead
        else "Queued: the worker starts it in a moment."
    )


def draw_log(run: dict[str, Any], expanded: bool) -> None:
    path = state.run_folder(run["id"]).log
    tail = state.log_tail(path)
    with st.expander(f"Log (last lines of {path.name})", expanded=expanded):
        if tail:
            st.code(tail, language=None)
        else:
            st.caption(f"No log yet ({path}).")


def draw_worker_gone(run: dict[str, Any]) -> None:
    """A running run that no live worker holds (store.settle_run has left it running, so its
    trainer still runs): say so, and what can be done."""
    where = f"pid {run['trainer_pid']} on {run['trainer_host']}" if run.get("trainer_pid") else ""
    st.warning(
        f"The worker that ran it ({run['worker']}) is gone, but its trainer still runs"
        + (f" ({where})" if where else "")
        + ": its end is recorded when it stops. Cancel stops it; it can be resumed once it "
        "has stopped.",
        icon=":material/link_off:",
    )


def draw_live(run_id: int, shown_status: str) -> None:
    store.settle_quietly(state.get_db(), run_id)  # whoever looks records an orphan's end
    run = store.get_run(state.get_db(), run_id)
    if run is None:
        st.warning(f"Run {run_id} was deleted.")
        return
    if run["status"] != shown_status:
        # Finished (or started): redraw the whole page, which stops or starts the refresh.
        st.rerun()
    draw_progress(run)
    if run["worker_gone"]:
        draw_worker_gone(run)
    if run["status"] == "failed" and run.get("error"):
        st.error(f"The run failed: {run['error']}")
    draw_charts(run)
    if run["status"] == "failed" and not store.get_metrics(state.get_db(), run_id, ["lr"]):
        draw_log(run, expanded=True)


# -- reports -------------------------------------------------------------------------------


@st.cache_data(show_spinner="Computing the report…", max_entries=16)
def classification_report(path: str, mtime: float) -> dict:
    from engine.evaluate import classification_report as report

    preds = state.read_json(Path(path))
    return report(preds["probs"], preds["targets"], preds["classes"])


@st.cache_data(show_spinner="Computing the report…", max_entries=64)
def detection_report(path: str, mtime: float, iou: float, score: float) -> dict:
    from engine.evaluate import detection_report as report

    preds = state.read_json(Path(path))
    return report(preds["preds"], preds["targets"], preds["classes"], iou, score)


# Each report's widgets and charts take a key prefix: the final report draws the same ones.


def draw_classification_report(
    run: dict[str, Any], preds: dict, path, mtime: float, prefix: str = ""
) -> None:
    report = classification_report(str(path), mtime)
    classes = [str(c) for c in preds["classes"]]
    tabs = st.tabs(["Confusion matrix", "Per class", "ROC and PR curves", "Mistakes"])
    with tabs[0]:
        normalized = st.toggle(
            "Normalised (share of each true class)", key=f"{prefix}confusion_norm"
        )
        if len(classes) == 2:
            report = report | draw_binary_threshold(preds, classes, prefix)
        matrix = report["confusion_normalized"] if normalized else report["confusion"]
        st.plotly_chart(
            charts.confusion_figure(matrix, classes, normalized=normalized),
            key=f"{prefix}chart_confusion",
        )
    with tabs[1]:
        st.dataframe(
            report["per_class"],
            hide_index=True,
            column_config={
                k: st.column_config.NumberColumn(format="%.3f")
                for k in ("precision", "recall", "f1")
            },
        )
    with tabs[2]:
        left, right = st.columns(2)
        left.plotly_chart(charts.curves_figure(report["roc"], "roc"), key=f"{prefix}chart_roc")
        right.plotly_chart(charts.curves_figure(report["pr"], "pr"), key=f"{prefix}chart_pr")
    with tabs[3]:
        draw_mistakes(run, preds, report["wrong"], classes, prefix)


def draw_binary_threshold(preds: dict, classes: list[str], prefix: str) -> dict:
    """The decision threshold of a two-class run: class 1 when its probability reaches it.
    Returns the confusion matrices at that threshold, shown at full precision."""
    threshold = st.slider(
        f"Decision threshold (probability of {classes[1]})",
        0.0,
        1.0,
        0.5,
        0.001,
        format="%.3f",
        key=f"{prefix}binary_threshold",
        help=f"An image counts as {classes[1]} when its probability is at least this. "
        "The matrix and the scores below follow it.",
    )
    scores = reports.binary_at_threshold(preds["probs"], preds["targets"], threshold)
    cols = st.columns(3)
    for col, key in zip(cols, ("precision", "recall", "f1")):
        col.metric(f"{key} ({classes[1]})", f"{scores[key]:.3f}")
    return {k: scores[k] for k in ("confusion", "confusion_normalized")}


def draw_page_picker(total: int, key: str) -> int:
    """A page number for a gallery of `total` pictures; 1 when they fit on one page."""
    pages = reports.page_count(total)
    if pages == 1:
        return 1
    return int(st.number_input(f"Page (of {pages})", 1, pages, 1, key=key))


def draw_mistakes(
    run: dict[str, Any], preds: dict, wrong: list[int], classes: list[str], prefix: str
) -> None:
    """Misclassified images, the most confident first, picked by true class, predicted class
    and confidence, a page at a time."""
    names = dict(enumerate(classes))
    left, middle, right = st.columns(3)
    truths = left.multiselect(
        "True class", list(names), format_func=names.get, key=f"{prefix}mistakes_true"
    )
    guesses = middle.multiselect(
        "Predicted class", list(names), format_func=names.get, key=f"{prefix}mistakes_pred"
    )
    confidence = right.slider(
        "Confidence of the prediction",
        0.0,
        1.0,
        (0.0, 1.0),
        0.01,
        key=f"{prefix}mistakes_confidence",
    )
    picked = reports.select_mistakes(
        wrong, preds["probs"], preds["targets"], truths, guesses, confidence
    )
    split = preds.get("split", "test")
    st.caption(
        f"{len(wrong)} of {len(preds['targets'])} {split} images misclassified, {len(picked)} "
        "of them match the filters; the most confident mistakes first."
    )
    page = draw_page_picker(len(picked), f"{prefix}mistakes_page")
    pictures, captions = [], []
    base = (run["config"] or {}).get("dataset")
    for i in reports.page_of(picked, page):
        image = images.open_image(preds["paths"][i], base)
        if image is None:
            continue
        probs = preds["probs"][i]
        guess = max(range(len(probs)), key=probs.__getitem__)
        truth = preds["targets"][i]
        pictures.append(images.upscale(image))
        captions.append(
            f"true {classes[truth]} ({probs[truth]:.2f}) · predicted {classes[guess]} "
            f"({probs[guess]:.2f})"
        )
    if pictures:
        st.image(pictures, caption=captions, width=160)


def draw_detection_report(
    run: dict[str, Any], preds: dict, path, mtime: float, prefix: str = ""
) -> None:
    card = state.read_json(state.run_folder(run["id"]).card) or {}
    default_score = float(card.get("threshold") or 0.5)
    left, right = st.columns(2)
    iou = left.slider("IoU threshold", 0.1, 0.95, 0.5, 0.05, key=f"{prefix}det_iou")
    score = right.slider(
        "Confidence threshold",
        0.0,
        1.0,
        default_score,
        state.THRESHOLD_STEP,
        format=state.THRESHOLD_FORMAT,
        key=f"{prefix}det_score",
        help="The default is the run's best-F1 threshold, exactly.",
    )
    report = detection_report(str(path), mtime, float(iou), float(score))
    classes = [str(c) for c in preds["classes"]]
    cols = st.columns(5)
    for col, key in zip(cols, ("map", "map_50", "precision", "recall", "f1")):
        value = report.get(key)
        col.metric(key, "—" if value is None else f"{value:.3f}")
    tabs = st.tabs(["AP per class", "Precision-recall", "Confusion matrix", "Gallery"])
    with tabs[0]:
        st.dataframe(
            report["per_class"],
            hide_index=True,
            column_config={
                k: st.column_config.NumberColumn(format="%.3f")
                for k in ("ap", "ap_50", "precision", "recall")
            },
        )
    with tabs[1]:
        st.plotly_chart(charts.pr_curve_figure(report["pr_curve"]), key=f"{prefix}chart_det_pr")
    with tabs[2]:
        st.plotly_chart(
            charts.confusion_figure(
                report["confusion"], report["row_labels"], report["column_labels"]
            ),
            key=f"{prefix}chart_det_confusion",
        )
        st.caption(
            "Rows: true class; columns: predicted class. “not detected”: a true box no "
            "detection matched; “not an object”: a detection that matched no box."
        )
    with tabs[3]:
        draw_detection_gallery(run, preds, classes, float(score), prefix)


def draw_detection_gallery(
    run: dict[str, Any], preds: dict, classes: list[str], score: float, prefix: str
) -> None:
    """Every image with its true boxes and the detections the confidence slider keeps (the
    same threshold the scores above use), a page at a time."""
    st.caption(
        "Green: true boxes; red: predictions with a confidence of at least "
        f"{score:g} (the confidence threshold above)."
    )
    paths = preds["paths"]
    page = draw_page_picker(len(paths), f"{prefix}det_gallery_page")
    pictures, captions = [], []
    base = (run["config"] or {}).get("dataset")
    for i in reports.page_of(range(len(paths)), page):
        image = images.open_image(paths[i], base)
        if image is None:
            continue
        truth = preds["targets"][i]
        boxes, labels, scores = images.detections_above(preds["preds"][i], score)
        image = images.draw_boxes(
            image, truth["boxes"], truth["labels"], classes, images.TRUE_COLOR
        )
        image = images.draw_boxes(image, boxes, labels, classes, images.PRED_COLOR, scores)
        pictures.append(images.upscale(image, 256))
        captions.append(f"{len(truth['labels'])} true, {len(boxes)} predicted")
    if pictures:
        st.image(pictures, caption=captions, width=256)


def draw_report(run: dict[str, Any], path: Path, prefix: str = "") -> None:
    """The report widgets of one predictions file (per-epoch split, or the final report's)."""
    preds = state.read_json(path)
    if not preds:
        st.warning(f"Cannot read {path}.")
        return
    mtime = path.stat().st_mtime
    try:
        if preds.get("task", run["task"]) == "detection":
            draw_detection_report(run, preds, path, mtime, prefix)
        else:
            draw_classification_report(run, preds, path, mtime, prefix)
    except (KeyError, ValueError, TypeError) as exc:
        st.error(f"Cannot read {path}: {exc}")


def draw_final_report(run: dict[str, Any], final: dict[str, Any]) -> None:
    """The best epoch's model scored once, at the end, on the split kept apart (test) while
    the epochs were judged on val (engine.train's report_final_test)."""
    split = final.get("split", "test")
    st.header(f"Final report on the {split} split (best epoch {final.get('best_epoch')})")
    st.caption(
        f"The best epoch's model on {final.get('images', '—')} {split} images that took no part "
        "in training or in choosing the best epoch: the score to expect on new data."
    )
    rows = [{"metric": k, "value": v} for k, v in (final.get("metrics") or {}).items()]
    st.dataframe(
        rows,
        hide_index=True,
        column_config={"value": st.column_config.NumberColumn(format="%.4f")},
    )
    draw_report(run, state.run_folder(run["id"]).final_predictions, prefix="final_")


def draw_reports(run: dict[str, Any]) -> None:
    summary = run["summary"] or {}
    path = state.run_folder(run["id"]).predictions
    if path.is_file():
        split, epoch = summary.get("eval_split") or "test", summary.get("best_epoch")
        st.header(f"Evaluation on the {split} split" + (f" (best epoch {epoch})" if epoch else ""))
        draw_report(run, path)
    if summary.get("final_test"):
        draw_final_report(run, summary["final_test"])


# The run folder holds model.safetensors already: offer it as a download, not an export.
EXPORT_FORMATS = tuple(f.name for f in ALL_EXPORT_FORMATS.values() if not f.in_run_folder)


def export_model(run_id: int) -> None:
    """Write the chosen format with engine.export (a button callback; torch loads here)."""
    fmt = st.session_state.get("export_format", "onnx")
    try:
        from engine.export import export_run

        with st.spinner(f"Exporting {fmt}…"):
            path = export_run(run_id, fmt, home=state.home())
    except Exception as exc:  # ExportError, or a model the exporter cannot trace
        st.session_state["export_message"] = ("error", f"Export to {fmt} failed: {exc}")
    else:
        st.session_state["export_message"] = ("success", f"Exported {path.name}.")


def draw_exports(run_id: int, run_name: str | None = None) -> None:
    folder = state.run_folder(run_id)
    files = folder.downloads()
    if not files:
        return
    st.header("Export")
    cols = st.columns(min(4, len(files)))
    for i, file in enumerate(files):
        size = file.stat().st_size / 1e6
        cols[i % len(cols)].download_button(
            f"{file.name} ({size:.1f} MB)",
            data=lambda f=file: f.read_bytes(),
            file_name=download_name(run_id, run_name, file),
            key=f"download_{file.relative_to(folder.path)}",
            mime="application/json" if file.suffix == ".json" else "application/octet-stream",
        )
    if not folder.has_model():
        return
    left, right = st.columns([1, 3])
    left.selectbox("Format", EXPORT_FORMATS, key="export_format")
    right.button(
        "Export",
        key="export_run",
        on_click=export_model,
        args=(run_id,),
        help="Writes the model in that format (and its card) under the run's export/ folder.",
    )
    message = st.session_state.pop("export_message", None)
    if message:
        getattr(st, message[0])(message[1])


def draw_summary_card(run: dict[str, Any]) -> None:
    """What a reviewer asks first, in words; the raw summary stays one click away."""
    if not run["summary"]:
        return
    duration = state.format_duration(state.duration_seconds(run))
    facts = reports.summary_facts(run, duration)
    with st.container(border=True, key="summary_card"):
        cols = st.columns(2)
        for i, (label, value) in enumerate(facts):
            cols[i % 2].markdown(f"**{label}**: {value}")


def draw_config(run: dict[str, Any]) -> None:
    draw_summary_card(run)
    with st.expander("Config"):
        rows = [{"key": k, "value": "" if v is None else str(v)} for k, v in run["config"].items()]
        st.dataframe(rows, hide_index=True, height=min(600, 35 * len(rows) + 40))
    with st.expander("Summary (raw JSON)", expanded=False):
        st.json(run["summary"] or {})


# -- page ----------------------------------------------------------------------------------

st.title("Run")
db = state.get_db()
run_id = pick_run(state.run_choices(db))
if run_id is None:
    st.info("No runs yet. Launch one from the New run page.")
    st.page_link("pages/new_run.py", label="New run", icon=":material/add_circle:")
    st.stop()
run = store.get_run(db, run_id)
if run is None:
    st.error(f"There is no run {run_id}.")
    st.stop()

st.subheader(f"#{run['id']} {run['name']} · {BADGES.get(store.run_state(run), run['status'])}")
st.caption(
    f"{run['task']} · {run['model']} · dataset `{run['dataset']}` · launched by "
    f"{run['user'] or 'anonymous'} on {state.format_time(run['created_at'])}"
    + (f" · tags: {', '.join(run['tags'])}" if run["tags"] else "")
)
# Only the actions that apply to this run and this user, left-aligned (fixed slots left gaps
# where one did not apply).
allowed = store.allowed_actions(run, state.current_user())
shown = [a for a in ("cancel", "resume", "rerun", "edit") if a in allowed]
if store.state_actions(run) and not allowed:
    st.caption("Read only: your role lets you look at this run, not change it.")
slots = dict(zip(shown, st.columns([1] * len(shown) + [6 - len(shown)])))
if "cancel" in slots:
    slots["cancel"].button(
        "Cancel",
        key="run_cancel",
        on_click=cancel,
        args=(run_id,),
        disabled=bool(run.get("cancel_requested")),
        help="Stops the run cleanly at the next step; the best weights so far are kept.",
    )
if "resume" in slots:
    slots["resume"].button(
        "Resume",
        key="run_resume",
        on_click=resume,
        args=(run_id,),
        help="Queue it again; it continues from its last finished epoch.",
    )
if "rerun" in slots:
    slots["rerun"].button(
        "Re-run",
        key="run_rerun",
        on_click=rerun,
        args=(run_id,),
        help="Queue a new run with the same config.",
    )
if "edit" in slots and slots["edit"].button("Edit and re-run", key="run_edit"):
    st.switch_page("pages/new_run.py", query_params={"from": run_id})
st.segmented_control(
    "x axis",
    ["epoch", "step"],
    key="run_x",
    default="epoch",
    help="Plot the curves per epoch or per optimizer step.",
)

interval = 2 if run["status"] in ACTIVE else None
st.fragment(run_every=interval)(draw_live)(run_id, run["status"])
draw_config(run)
draw_reports(run)
draw_exports(run_id, run["name"])
