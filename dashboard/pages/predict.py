"""Try it: a finished run's model on new images.

Classification shows the top classes with their probabilities and a Grad-CAM heatmap of where
the model looked; detection draws the boxes above a confidence slider (default: the run's
saved threshold). Images come from uploads or from a file or folder on the server. The logic
lives in engine.predict and engine.gradcam; torch is imported on first use only.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import streamlit as st

from dashboard import charts, state
from dashboard import images as pictures
from engine import data_roots

state.page_setup()

MAX_SERVER_IMAGES = 48  # a server folder can hold thousands: the CLI is for those
MAX_HEATMAPS = 12  # Grad-CAM costs a backward pass per image on the dashboard's CPU
PREDICT_BATCH = 8
SHOWN_SIDE = 1024  # heatmap overlays are drawn at most this large (photos can be 12 MP)
UPLOAD_TYPES = ["jpg", "jpeg", "png", "bmp", "gif", "tif", "tiff", "webp"]


def runs_with_model(db) -> dict[int, str]:
    """{id: label} of the runs that have a model file (completed, or stopped after an epoch)."""
    choices = state.run_choices(db)
    return {i: label for i, label in choices.items() if state.run_folder(i).has_model()}


@st.cache_resource(max_entries=3, show_spinner="Loading the model…")
def _load_predictor(run_id: int, home: str, mtime: float):
    from engine.predict import load_predictor

    # CPU: a few images need no GPU, and the GPUs belong to training runs.
    return load_predictor(run_id, home=home, device="cpu")


def get_predictor(run_id: int):
    """The run's predictor, cached until its model file changes (a running run's new best)."""
    path = state.run_folder(run_id).model
    return _load_predictor(run_id, str(state.home()), path.stat().st_mtime)


def pick_run(choices: dict[int, str]) -> int:
    ss = st.session_state
    wanted = state.query_run_ids("run")
    if wanted and wanted[0] in choices and ss.get("predict_run") is None:
        ss["predict_run"] = wanted[0]
    if ss.get("predict_run") not in choices:
        ss["predict_run"] = next(iter(choices))
    st.selectbox("Run", list(choices), key="predict_run", format_func=choices.get)
    st.query_params["run"] = str(ss["predict_run"])
    return ss["predict_run"]


# -- images in --------------------------------------------------------------------------------


def read_uploads(files, read) -> list[dict[str, Any]]:
    """`read`: the predictor's (Predictor.read), which decodes as the run's evaluation did."""
    from engine.data import ImageError

    items = []
    for file in files or []:
        item = {"name": file.name, "key": f"upload:{file.file_id}", "image": None, "error": ""}
        buffer = io.BytesIO(file.getvalue())
        buffer.name = file.name  # so an error names the upload
        try:
            item["image"] = read(buffer)
        except ImageError as exc:
            item["error"] = exc.reason
        items.append(item)
    return items


def read_server_paths(text: str, read) -> list[dict[str, Any]]:
    from engine.data import ImageError
    from engine.predict import collect_images

    roots = data_roots.data_roots(state.home())
    paths = [p.strip() for p in text.replace("\n", ";").split(";") if p.strip()]
    # Only paths inside the data roots are looked at, and a missing path and one outside get
    # the same error: the page must not show the server's files nor tell which exist.
    files, missing = collect_images([p for p in paths if data_roots.is_inside(p, roots)])
    files = [f for f in files if data_roots.is_inside(f, roots)]  # a symlink out of a folder
    unseen = [p for p in paths if p in missing or not data_roots.is_inside(p, roots)]
    error = f"not found inside the data roots ({data_roots.describe_roots(roots)})"
    items = [{"name": p, "key": p, "image": None, "error": error} for p in unseen]
    if len(files) > MAX_SERVER_IMAGES:
        st.info(
            f"{len(files)} images found; showing the first {MAX_SERVER_IMAGES}. "
            "`visionboard predict RUN FOLDER --out preds.csv` predicts them all."
        )
    for path in files[:MAX_SERVER_IMAGES]:
        item = {"name": str(path), "key": f"{path}:{path.stat().st_mtime}", "image": None}
        try:
            item["image"], item["error"] = read(path), ""
        except ImageError as exc:
            item["error"] = exc.reason
        items.append(item)
    if not files and not unseen:
        items.append({"name": text, "key": text, "image": None, "error": "no images found"})
    return items


# -- predictions (cached per run model and image, so moving a slider does not re-run it) -----


def predict_images(predictor, items: list[dict[str, Any]], model_key: str) -> list[dict | None]:
    """Results of the readable items (None for the others); detection keeps every box, the
    slider filters afterwards."""
    cache = st.session_state.setdefault("predict_cache", {})
    todo = [it for it in items if it["image"] is not None and (model_key, it["key"]) not in cache]
    if todo:
        with st.spinner(f"Predicting {len(todo)} image(s)…"):
            for start in range(0, len(todo), PREDICT_BATCH):
                chunk = todo[start : start + PREDICT_BATCH]
                for item, result in zip(chunk, predictor.predict([it["image"] for it in chunk])):
                    cache[(model_key, item["key"])] = result
    if len(cache) > 512:  # forget the oldest entries of a long session
        for key in list(cache)[: len(cache) - 512]:
            del cache[key]
    return [cache.get((model_key, it["key"])) if it["image"] is not None else None for it in items]


def explain_image(predictor, item: dict[str, Any], model_key: str, target: int):
    cache = st.session_state.setdefault("predict_cam_cache", {})
    key = (model_key, item["key"], target)
    if key not in cache:
        from engine.gradcam import overlay

        heatmap, _ = predictor.explain(item["image"], target=target)
        shown = item["image"].copy()
        shown.thumbnail((SHOWN_SIDE, SHOWN_SIDE))
        cache[key] = overlay(shown, heatmap)
        if len(cache) > 2 * MAX_HEATMAPS:
            del cache[next(iter(cache))]
    return cache[key]


def keep_boxes(result: dict, threshold: float) -> dict:
    keep = [i for i, s in enumerate(result["scores"]) if s >= threshold]
    return {k: [result[k][i] for i in keep] for k in ("boxes", "scores", "labels", "label_ids")}


# -- drawing ----------------------------------------------------------------------------------


def draw_classification(predictor, item, result, model_key: str, k: int, heatmap: bool) -> None:
    cols = st.columns([1, 1, 2] if heatmap else [1, 2])
    cols[0].image(pictures.upscale(item["image"]), caption="image", width="stretch")
    if heatmap:
        cam = explain_image(predictor, item, model_key, result["index"])
        cols[1].image(
            pictures.upscale(cam),
            caption=f"where it looked for {result['label']}",
            width="stretch",
        )
    cols[-1].plotly_chart(charts.topk_figure(result["probs"], k), key=f"topk_{item['key']}")


def draw_detection(predictor, item, result, threshold: float) -> None:
    kept = keep_boxes(result, threshold)
    drawn = pictures.draw_boxes(
        item["image"],
        kept["boxes"],
        kept["label_ids"],
        predictor.classes,
        pictures.PRED_COLOR,
        kept["scores"],
    )
    cols = st.columns([2, 1])
    cols[0].image(drawn, width="stretch")
    if not kept["boxes"]:
        cols[1].caption(f"No box scores {threshold:.4f} or more.")
        return
    rows = [
        {"class": label, "score": round(score, 3), "box (x1, y1, x2, y2)": [round(v) for v in box]}
        for box, score, label in zip(kept["boxes"], kept["scores"], kept["labels"])
    ]
    cols[1].dataframe(rows, hide_index=True)


def draw_run_caption(predictor) -> None:
    card = predictor.card
    metric = card.get("metric")
    value = (card.get("metrics") or {}).get(metric)
    parts = [
        card["task"],
        str(card.get("model")),
        f"{len(predictor.classes)} classes: {', '.join(predictor.classes[:12])}"
        + ("…" if len(predictor.classes) > 12 else ""),
    ]
    if value is not None:
        parts.append(f"test {metric} {value:.4f} (epoch {card.get('best_epoch')})")
    st.caption(" · ".join(parts))


# -- page -------------------------------------------------------------------------------------

st.title("Try a model")
db = state.get_db()
choices = runs_with_model(db)
if not choices:
    st.info(
        "No run has a trained model yet: a run saves one when its first epoch ends. "
        "Launch one from the New run page."
    )
    st.stop()
run_id = pick_run(choices)
try:
    predictor = get_predictor(run_id)
except (ValueError, OSError) as exc:  # PredictError is a ValueError
    st.error(f"Cannot load the model of run {run_id}: {exc}")
    st.stop()
draw_run_caption(predictor)
model_key = f"{run_id}:{state.run_folder(run_id).model.stat().st_mtime}"

uploads = st.file_uploader(
    "Images", type=UPLOAD_TYPES, accept_multiple_files=True, key="predict_upload"
)
with st.expander("Images on this server", expanded=bool(st.session_state.get("predict_paths"))):
    st.text_input(
        "File or folder paths (separate several with ;)",
        key="predict_paths",
        help=f"Folders are searched recursively; the first {MAX_SERVER_IMAGES} images are shown. "
        "Paths must lie inside a data root: "
        + data_roots.describe_roots(data_roots.data_roots(state.home())),
    )

detection = predictor.task == "detection"
if detection:
    threshold = st.slider(
        "Confidence",
        0.0,
        1.0,
        value=predictor.default_threshold,
        step=state.THRESHOLD_STEP,
        format=state.THRESHOLD_FORMAT,
        key=f"predict_conf_{run_id}",
        help="Boxes scoring below this are hidden. The default is the run's best-F1 threshold.",
    )
else:
    n = len(predictor.classes)
    controls = st.columns(2)
    top_k = (
        controls[0].slider("Top classes", 1, n, min(5, n), key=f"predict_topk_{run_id}")
        if n > 1
        else 1
    )
    heatmap = controls[1].toggle(
        "Heatmap",
        value=True,
        key="predict_heatmap",
        help="Grad-CAM: the regions that raised the predicted class's score are hot (red). "
        f"Drawn for the first {MAX_HEATMAPS} images.",
    )

items = read_uploads(uploads, predictor.read)
if st.session_state.get("predict_paths", "").strip():
    items += read_server_paths(st.session_state["predict_paths"], predictor.read)
items = list({item["key"]: item for item in items}.values())  # a file named twice shows once
if not items:
    st.caption("Drop images above to see what the model predicts.")
    st.stop()

results = predict_images(predictor, items, model_key)
records = []
readable = 0
for item, result in zip(items, results):
    st.markdown(f"**{Path(item['name']).name}**")
    if result is None:
        st.warning(f"{item['name']}: {item['error']}")
        records.append((item["name"], None, item["error"]))
        continue
    if detection:
        draw_detection(predictor, item, result, threshold)
        records.append((item["name"], keep_boxes(result, threshold), ""))
    else:
        readable += 1
        draw_classification(
            predictor, item, result, model_key, top_k, heatmap and readable <= MAX_HEATMAPS
        )
        records.append((item["name"], result, ""))

from engine.predict import format_csv  # noqa: E402  (torch is loaded by now anyway)

st.download_button(
    "Download predictions (CSV)",
    data=format_csv(records, predictor.task, predictor.classes),
    file_name=f"predictions_run{run_id}.csv",
    mime="text/csv",
    key="predict_download",
)
