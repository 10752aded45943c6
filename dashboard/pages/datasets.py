"""Datasets: register one by path and format, or upload one, then look at it before training.

Registering runs engine.data.inspect_dataset (format and task detected when left on auto)
and stores what it found; the view shows the class distribution, sample images with their
labels (boxes drawn for detection) and the data check (dashboard.data_check). An upload (a
zip, or image files of one class) is unpacked safely by engine.data.upload into the data
directory, with a progress bar, and its data check shown.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from dashboard import charts, images, state
from dashboard.data_check import count_problems, draw_check
from engine import data_roots, store
from engine.choices import TASKS, format_names

state.page_setup()

VIEW = "dataset_view"
UPLOAD_ZIP, UPLOAD_IMAGES = "A zip of the dataset", "Image files of one class"
SAMPLES_PER_CLASS = 4
DETECTION_SAMPLES = 8


def inspect(path: str, task: str | None, fmt: str) -> dict[str, Any]:
    from engine.data import inspect_dataset

    return inspect_dataset(path, task=task, fmt=fmt)


def register(name: str, path: str, task: str | None, fmt: str) -> dict[str, Any]:
    """Inspect and register; returns the inspect info (its "error" says why nothing was stored)."""
    try:  # missing and outside the data roots read alike: the page must not probe the server
        data_roots.confine(path, state.home(), what="datasets")
    except data_roots.PathRefused as exc:
        return {"error": str(exc)}
    folder = Path(path).expanduser()
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
    try:
        store.register_dataset(
            state.get_db(), name, new_path, info["format"], info["task"], info,
            by=state.current_user(),
        )  # fmt: skip
    except store.PermissionDenied as exc:
        return {"error": str(exc)}
    state.load_splits.clear()
    return info


def draw_register_form() -> None:
    with st.expander("Register a dataset", expanded=not store.list_datasets(state.get_db())):
        with st.form("register_dataset", clear_on_submit=False):
            path = st.text_input(
                "Path on the server",
                key="ds_path",
                help="Image folders (one per class), a CSV file, COCO, VOC or YOLO, inside a "
                "data root: " + data_roots.describe_roots(data_roots.data_roots(state.home())),
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
                if info.get("problems"):
                    draw_check(info, "register_check")
            else:
                st.session_state[VIEW] = name
                st.success(
                    f"Registered **{name}**: {info['task']}, {info['format']}, "
                    f"{len(info.get('classes', []))} classes."
                )


def upload(kind: str, name: str, class_name: str, uploaded) -> dict[str, Any]:
    """Unpack and register an upload with a progress bar; the data check report, with
    "registered", or {"error"} when the upload was refused (nothing is kept then)."""
    from engine.data import upload as uploads

    bar = st.progress(0.0, text="Unpacking…")

    def progress(fraction: float, text: str) -> None:
        bar.progress(min(max(fraction, 0.0), 1.0), text=text)

    try:
        if kind == UPLOAD_ZIP:
            info = uploads.upload_zip(
                state.get_db(), name, uploaded, by=state.current_user(), progress=progress
            )
        else:
            files = [(f.name, f.getvalue()) for f in uploaded]
            info = uploads.upload_images(
                state.get_db(), name, class_name, files, by=state.current_user(),
                progress=progress,
            )  # fmt: skip
    except (uploads.UploadError, store.PermissionDenied) as exc:
        return {"error": str(exc), "registered": False}
    finally:
        bar.empty()
    state.load_splits.clear()
    return info


def draw_upload_form() -> None:
    from engine.data.images import IMAGE_EXTENSIONS
    from engine.data.upload import UploadError, UploadLimits, size_text

    try:
        limits = UploadLimits.from_env()
    except UploadError as exc:  # a bad setting: say which, do not offer an upload
        st.error(f"Uploads are off: {exc}")
        return
    with st.expander("Upload a dataset"):
        kind = st.radio("Upload", [UPLOAD_ZIP, UPLOAD_IMAGES], key="up_kind", horizontal=True)
        with st.form("upload_dataset", clear_on_submit=False):
            name = st.text_input(
                "Name",
                key="up_name",
                help="Also the folder's name under the data directory's datasets/. "
                + ("Empty: the zip's name." if kind == UPLOAD_ZIP else ""),
            )
            class_name = ""
            limit_text = (
                f"Up to {size_text(limits.max_upload_bytes)} sent, "
                f"{size_text(limits.max_unpacked_bytes)} and {limits.max_files} files unpacked."
            )
            if kind == UPLOAD_ZIP:
                uploaded = st.file_uploader(
                    "Zip file",
                    type=["zip"],
                    key="up_zip",
                    help="Any layout the Register form reads (class folders, COCO, VOC, YOLO, "
                    "CSV), at the top of the zip or in one folder. " + limit_text,
                )
            else:
                class_name = st.text_input(
                    "Class", key="up_class", help="The class every image of this upload shows."
                )
                uploaded = st.file_uploader(
                    "Image files",
                    type=sorted(ext.lstrip(".") for ext in IMAGE_EXTENSIONS),
                    accept_multiple_files=True,
                    key="up_images",
                    help="Upload each class in turn under the same name: the dataset is "
                    "registered once it has two classes. " + limit_text,
                )
            submitted = st.form_submit_button("Upload", type="primary")
    if not submitted:
        return
    if not uploaded:
        st.error("Choose a zip file to upload." if kind == UPLOAD_ZIP else "Choose image files.")
        return
    name = name.strip() or (Path(uploaded.name).stem if kind == UPLOAD_ZIP else "")
    info = upload(kind, name, class_name, uploaded)
    if info.get("registered"):
        st.session_state[VIEW] = name
        st.success(
            f"Uploaded and registered **{name}**: {info['task']}, {info['format']}, "
            f"{len(info.get('classes', []))} classes."
        )
    elif info.get("problems"):
        kept = (
            "Nothing was kept: fix the zip and upload it again."
            if kind == UPLOAD_ZIP
            else "The images are kept: upload what is missing under the same name."
        )
        st.error(f"Not registered: {info['error']} {kept}")
    else:
        st.error(f"Upload refused: {info['error']}")
    if info.get("problems") and not info.get("registered"):  # a registered one is shown below
        draw_check(info, "upload_check")


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
                "problems": count_problems(info),
                "path": d["path"],
                "registered": state.format_time(d["created_at"]),
                "added by": d.get("added_by") or "",
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
    draw_check(info, "ds_check")
    with st.expander("Sample images", expanded=True):
        draw_samples(dataset)
    if not store.may_change_dataset(state.current_user(), dataset):
        owner = dataset.get("added_by") or "nobody"
        st.caption(
            f"Registered by {owner}: only they or an admin can inspect it again or remove it."
        )
        return
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
        try:
            store.delete_dataset(state.get_db(), dataset["name"], by=state.current_user())
        except store.PermissionDenied as exc:  # the role changed since the page was drawn
            st.error(str(exc))
            return
        st.session_state.pop(VIEW, None)
        st.rerun()


st.title("Datasets")
if store.may(state.current_user(), "add_dataset"):
    draw_register_form()
    draw_upload_form()
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
