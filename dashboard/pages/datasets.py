"""Datasets: register one by path and format, then look at it before training on it.

Registering runs engine.data.inspect_dataset (format and task detected when left on auto)
and stores what it found; the view shows the class distribution, sample images with their
labels (boxes drawn for detection) and the problems found.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from dashboard import charts, images, state
from engine import store
from engine.choices import TASKS, format_names

state.page_setup()

VIEW = "dataset_view"
SAMPLES_PER_CLASS = 4
DETECTION_SAMPLES = 8


def inspect(path: str, task: str | None, fmt: str) -> dict[str, Any]:
    from engine.data import inspect_dataset

    return inspect_dataset(path, task=task, fmt=fmt)


def register(name: str, path: str, task: str | None, fmt: str) -> dict[str, Any]:
    """Inspect and register; returns the inspect info (its "error" says why nothing was stored)."""
    folder = Path(path).expanduser()
    if not folder.exists():
        return {"error": f"{folder} does not exist on the server"}
    info = inspect(str(folder), task, fmt)
    if info.get("error"):
        return info
    taken = {d["name"]: d["path"] for d in store.list_datasets(state.get_db())}
    new_path = info.get("path") or str(folder)
    if name in taken and Path(taken[name]).resolve() != Path(new_path).resolve():
        # Registering is an upsert: it would silently point the name somewhere else.
        return {
            "error": f"name: {name!r} is already registered for {taken[name]}; give this "
            "dataset another name, or remove that one from the list first"
        }
    store.register_dataset(state.get_db(), name, new_path, info["format"], info["task"], info)
    state.load_splits.clear()
    return info


def draw_register_form() -> None:
    with st.expander("Register a dataset", expanded=not store.list_datasets(state.get_db())):
        with st.form("register_dataset", clear_on_submit=False):
            path = st.text_input(
                "Path on the server",
                key="ds_path",
                help="Image folders (one per class), a CSV file, COCO, VOC or YOLO.",
            )
            name = st.text_input("Name", key="ds_name", help="Empty: the folder's name.")
            cols = st.columns(2)
            task = cols[0].selectbox(
                "Task",
                [None, *TASKS],
                key="ds_task",
                format_func=lambda t: t or "auto (from the layout)",
                help="What the dataset is for; detected from the layout when left on auto.",
            )
            fmt = cols[1].selectbox("Format", list(format_names()), key="ds_format")
            submitted = st.form_submit_button("Register", type="primary")
        if submitted:
            path = path.strip()
            name = name.strip() or Path(path).expanduser().name
            if not path:
                st.error("path: give the dataset's folder or CSV file on the server.")
                return
            with st.spinner("Reading the dataset…"):
                info = register(name, path, task, fmt)
            if info.get("error"):
                st.error(f"Not registered: {info['error']}")
            else:
                st.session_state[VIEW] = name
                st.success(
                    f"Registered **{name}**: {info['task']}, {info['format']}, "
                    f"{len(info.get('classes', []))} classes."
                )


def dataset_rows(datasets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for d in datasets:
        info = d["info"] or {}
        split = info.get("images") or {}
        rows.append(
            {
                "name": d["name"],
                "task": d["task"],
                "format": d["format"],
                "classes": len(info.get("classes") or []),
                "train images": split.get("train"),
                "test images": split.get("test"),
                "problems": len(info.get("problems") or []),
                "path": d["path"],
                "registered": state.format_time(d["created_at"]),
            }
        )
    return rows


def draw_samples(dataset: dict[str, Any]) -> None:
    try:
        splits = state.load_splits(dataset["path"], dataset["task"], dataset["format"])
    except Exception as exc:  # a dataset that broke since it was registered
        st.error(f"Cannot read {dataset['path']}: {exc}")
        return
    pictures, captions = [], []
    if splits.task == "classification":
        per_class: dict[int, int] = {}
        for sample in splits.train + splits.test:
            if per_class.get(sample.label, 0) >= SAMPLES_PER_CLASS:
                continue
            image = images.open_image(sample.path)
            if image is None:
                continue
            per_class[sample.label] = per_class.get(sample.label, 0) + 1
            pictures.append(images.upscale(image, 96))
            captions.append(splits.classes[sample.label])
        width = 96
    else:
        for sample in (splits.train + splits.test)[:DETECTION_SAMPLES]:
            image = images.open_image(sample.path)
            if image is None:
                continue
            image = images.draw_boxes(
                image,
                sample.boxes.tolist(),
                sample.labels.tolist(),
                splits.classes,
                images.TRUE_COLOR,
            )
            pictures.append(images.upscale(image, 200))
            captions.append(f"{Path(sample.path).name}: {len(sample.labels)} box(es)")
        width = 200
    if pictures:
        st.image(pictures, caption=captions, width=width)
    else:
        st.caption("No readable image.")


def draw_dataset(dataset: dict[str, Any]) -> None:
    info = dataset["info"] or {}
    split = info.get("images") or {}
    cols = st.columns(4)
    cols[0].metric("Task", dataset["task"])
    cols[1].metric("Format", dataset["format"])
    cols[2].metric("Train / test images", f"{split.get('train', 0)} / {split.get('test', 0)}")
    cols[3].metric("Classes", len(info.get("classes") or []))
    st.caption(
        f"`{dataset['path']}` · split: "
        + ("the dataset's own" if info.get("split_source") == "dataset" else "seeded")
    )
    left, right = st.columns(2)
    if info.get("images_per_class"):
        left.plotly_chart(
            charts.class_distribution_figure(info["images_per_class"]), key="ds_distribution"
        )
    if info.get("boxes_per_class"):
        right.plotly_chart(
            charts.class_distribution_figure(info["boxes_per_class"], "Boxes per class"),
            key="ds_boxes",
        )
    problems = info.get("problems") or []
    empty = [c for c, n in (info.get("images_per_class") or {}).items() if _total(n) == 0]
    if problems or empty:
        st.warning(f"{len(problems) + len(empty)} problem(s) found.")
        rows = [{"file": c, "message": "class with no image"} for c in empty] + problems
        st.dataframe(rows, hide_index=True)
    else:
        st.success("No problems found.")
    with st.expander("Sample images", expanded=True):
        draw_samples(dataset)
    cols = st.columns(3)
    if cols[0].button(
        "Inspect again", key="ds_reinspect", help="Re-read the files (they changed?)"
    ):
        info = register(dataset["name"], dataset["path"], dataset["task"], dataset["format"])
        if info.get("error"):
            st.error(info["error"])
        else:
            st.rerun()
    confirm = cols[1].checkbox(
        "Yes, forget it", key="ds_confirm_delete", help="Files stay on disk."
    )
    if cols[2].button("Remove from the list", key="ds_delete", disabled=not confirm):
        store.delete_dataset(state.get_db(), dataset["name"])
        st.session_state.pop(VIEW, None)
        st.rerun()


def _total(value: Any) -> int:
    return sum(value.values()) if isinstance(value, dict) else int(value or 0)


st.title("Datasets")
draw_register_form()
datasets = store.list_datasets(state.get_db())
if not datasets:
    st.info("No dataset registered yet.")
    st.stop()
st.dataframe(dataset_rows(datasets), hide_index=True)
names = [d["name"] for d in datasets]
wanted = st.query_params.get("dataset")
if wanted in names and wanted != st.session_state.get("ds_applied"):
    st.session_state[VIEW] = st.session_state["ds_applied"] = wanted
if st.session_state.get(VIEW) not in names:
    st.session_state[VIEW] = names[0]


def on_view() -> None:
    st.query_params["dataset"] = st.session_state["ds_applied"] = st.session_state[VIEW]


name = st.selectbox("Look at", names, key=VIEW, on_change=on_view)
draw_dataset(next(d for d in datasets if d["name"] == name))
