"""Pre-trained weights: where they are, how they get here, and loading them without a network.

Training never downloads. Weights come, in this order, from:
1. a file imported with `visionboard weights import MODEL FILE` (stored as
   `<home>/weights/<model>.safetensors`, checked against the architecture at import);
2. timm's own cache (the Hugging Face hub cache, or torch hub's for older url-only weights) and
   torchvision's cache (`<torch hub dir>/checkpoints/`), as filled by `visionboard weights pull`
   on a machine with internet.
Files are read with safetensors or `torch.load(weights_only=True)`: never arbitrary unpickling.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from engine import choices, store
from engine.architectures import head_prefixes, model_family, reference_model

WEIGHTS_DIR = "weights"
STATE_DICT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
# timm has no ImageNet weights of its own for efficientnet_b7 (only an "untrained" tag); its TF
# twin has the same tensors, and engine.architectures builds efficientnet_b7 the TF way to match.
WEIGHT_SOURCES = {"efficientnet_b7": "tf_efficientnet_b7.ns_jft_in1k"}
# Checkpoint wrappers seen in the wild: {"state_dict": ...} (Lightning, timm train), {"model": ...}.
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")
# `weights pull` first checks that the download host answers: offline, huggingface_hub would
# otherwise retry for about a minute before giving up.
REACH_TIMEOUT_SECONDS = 5.0
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                   "all_proxy")  # fmt: skip


class WeightsUnavailable(RuntimeError):
    """No pre-trained weights for a model on this machine; the message says how to get them."""


# -- where weights are ----------------------------------------------------------------------


def weights_dir(home: str | Path | None = None) -> Path:
    return store.home_dir(home) / WEIGHTS_DIR


def imported_path(model: str, home: str | Path | None = None) -> Path:
    return weights_dir(home) / f"{model}.safetensors"


def weights_status(model: str, home: str | Path | None = None) -> dict[str, Any]:
    """Whether pre-trained weights for `model` are on this machine, and where. Only looks at
    files (no model is built), so the form can call it on every change."""
    family = model_family(model)
    found = _find_weights(model, family, home)
    source, path = found if found else (None, None)
    return {
        "model": model,
        "available": found is not None,
        "source": source,
        "path": str(path) if path else None,
    }


def list_weights(home: str | Path | None = None) -> list[dict[str, Any]]:
    """Status of the models the tasks offer by name, plus every imported file (with who
    imported it, `added_by`)."""
    names = list(choices.listed_models())
    folder = weights_dir(home)
    if folder.is_dir():
        for file in sorted(folder.glob("*.safetensors")):
            name = file.name[: -len(".safetensors")]
            if name not in names:
                names.append(name)
    out = []
    for name in names:
        try:
            out.append(weights_status(name, home))
        except ValueError:  # an imported file whose name timm no longer knows
            path = str(imported_path(name, home))
            out.append({"model": name, "available": False, "source": None, "path": path})
    db = store.connect(home)
    try:
        imports = {r["path"]: r["added_by"] for r in store.list_imported_weights(db).values()}
    finally:
        db.conn.close()
    for row in out:
        row["added_by"] = imports.get(row["path"]) if row["source"] == "imported" else None
    return out


def _find_weights(model: str, family: str, home) -> tuple[str, Path] | None:
    for name in _imported_names(model):
        path = imported_path(name, home)
        if path.is_file():
            return "imported", path
    if family == "torchvision":
        path = _torchvision_cache_file(model)
        return ("torchvision cache", path) if path.is_file() else None
    return _timm_cache_file(model)


def _imported_names(model: str) -> list[str]:
    # "efficientnet_b0.ra_in1k" can use a file imported as "efficientnet_b0".
    base = model.split(".", 1)[0]
    return [model] if base == model else [model, base]


def _hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment now (huggingface_hub reads it once
    at import, which would miss a test's or a user's later HF_HOME)."""
    env = os.environ
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(key):
            return Path(env[key]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    cache = Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return cache / "huggingface" / "hub"


def _torch_checkpoints_dir() -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def _url_file(url: str) -> Path:
    return _torch_checkpoints_dir() / os.path.basename(urlparse(url).path)


def _torchvision_weights(model: str):
    from torchvision.models import get_model_weights

    return get_model_weights(model).DEFAULT


def _torchvision_cache_file(model: str) -> Path:
    return _url_file(_torchvision_weights(model).url)


def _timm_pretrained_cfg(model: str):
    import timm

    return timm.get_pretrained_cfg(WEIGHT_SOURCES.get(model, model))


def _timm_cache_file(model: str) -> tuple[str, Path] | None:
    from huggingface_hub import try_to_load_from_cache

    cfg = _timm_pretrained_cfg(model)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        repo, _, revision = cfg.hf_hub_id.partition("@")
        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["pytorch_model.bin"]
        # timm prefers a safetensors twin of a .bin file; so do we.
        names = [n[: -len(".bin")] + ".safetensors" for n in names if n.endswith(".bin")] + names
        if "pytorch_model.bin" in names:
            names.insert(0, "model.safetensors")
        for filename in dict.fromkeys(names):
            found = try_to_load_from_cache(
                repo, filename, cache_dir=_hf_cache_dir(), revision=revision or None
            )
            if isinstance(found, str) and Path(found).is_file():
                return "timm cache", Path(found)
    if cfg.url:
        path = _url_file(cfg.url)
        if path.is_file():
            return "timm cache", path
    return None


def how_to_get(model: str) -> str:
    """The message of WeightsUnavailable: what to run, and where the file comes from."""
    where = ""
    try:
        if model_family(model) == "torchvision":
            where = f" (from {_torchvision_weights(model).url})"
        else:
            cfg = _timm_pretrained_cfg(model)
            if cfg is not None and cfg.hf_hub_id:
                where = f" (from https://huggingface.co/{cfg.hf_hub_id.split('@')[0]})"
            elif cfg is not None and cfg.url:
                where = f" (from {cfg.url})"
    except ValueError:
        pass
    return (
        f"no pre-trained weights for {model} on this machine and training never downloads. "
        f"Where there is internet run `visionboard weights pull {model}`; otherwise download the "
        f"weights file elsewhere{where} and run `visionboard weights import {model} FILE`. "
        "Or set pretrained = false to train from scratch."
    )


# -- reading and fitting --------------------------------------------------------------------


def read_state_dict(file: str | Path) -> dict[str, Any]:
    """A state dict from .safetensors, or .pth/.pt/.bin loaded with weights_only=True (tensors
    and plain containers only); unwraps {"state_dict": ...}/{"model": ...} checkpoints."""
    import torch

    path = Path(file)
    if not path.is_file():
        raise ValueError(f"weights file {path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in STATE_DICT_SUFFIXES:
        raise ValueError(
            f"weights file {path}: unsupported type {suffix or '(none)'!r}; expected one of "
            + ", ".join(STATE_DICT_SUFFIXES)
        )
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            data = load_file(str(path), device="cpu")
        except Exception as exc:
            raise ValueError(
                f"weights file {path}: not a readable safetensors file ({exc})"
            ) from None
    else:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ValueError(
                f"weights file {path}: cannot be read as a plain state dict ({exc}). Only tensors "
                "are loaded, never pickled Python objects: save `model.state_dict()` with "
                "torch.save, or as .safetensors."
            ) from None
    return _unwrap(data, path)


def _unwrap(data: Any, path: Path) -> dict[str, Any]:
    import torch

    while isinstance(data, dict) and not any(isinstance(v, torch.Tensor) for v in data.values()):
        inner = next((data[k] for k in WRAPPER_KEYS if isinstance(data.get(k), dict)), None)
        if inner is None:
            break
        data = inner
    if not isinstance(data, dict):
        raise ValueError(f"weights file {path}: holds a {type(data).__name__}, not a state dict")
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f"weights file {path}: holds no tensors (keys: {list(data)[:5]})")
    # Checkpoints saved from DistributedDataParallel prefix every key with "module.".
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


def _is_head(key: str, head_prefixes) -> bool:
    return any(key.startswith(p) for p in head_prefixes)


def _problems(expected: dict, state_dict: dict, head_prefixes) -> list[str]:
    # num_batches_tracked comes and goes between BatchNorm and FrozenBatchNorm: not a problem.
    def counted(key):
        return not key.endswith("num_batches_tracked") and not _is_head(key, head_prefixes)

    missing = [k for k in expected if k not in state_dict and counted(k)]
    unexpected = [k for k in state_dict if k not in expected and counted(k)]
    mismatched = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(expected[k].shape)}"
        for k in state_dict
        if k in expected and counted(k) and state_dict[k].shape != expected[k].shape
    ]
    out = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", mismatched)):
        if keys:
            more = f" and {len(keys) - 5} more" if len(keys) > 5 else ""
            out.append(f"{len(keys)} {label} keys: {', '.join(keys[:5])}{more}")
    return out


def fit_state_dict(model, state_dict: dict, head_prefixes, source: str = "weights") -> dict:
    """The part of `state_dict` that loads into `model`: every backbone tensor must fit; the head
    (keys under `head_prefixes`) is dropped where its shape differs (another number of classes).
    Falls back on the timm model's own checkpoint filter (other key layouts, resized position
    embeddings). Raises ValueError naming `source` and the keys that do not fit."""
    expected = model.state_dict()
    problems = _problems(expected, state_dict, head_prefixes)
    if problems:
        filtered = _timm_filter(model, state_dict)
        if filtered is not None and not _problems(expected, filtered, head_prefixes):
            state_dict, problems = filtered, []
    if problems:
        arch = getattr(model, "pretrained_cfg", {}).get("architecture") or type(model).__name__
        raise ValueError(
            f"{source} do not fit the {arch} architecture: " + "; ".join(problems) + ". Are they "
            "weights for another model?"
        )
    return {
        k: v
        for k, v in state_dict.items()
        if (k in expected and v.shape == expected[k].shape)
        # FrozenBatchNorm drops this key itself on load; BatchNorm wants it.
        or (k.endswith("num_batches_tracked") and k.rsplit(".", 1)[0] + ".running_mean" in expected)
    }


def _timm_filter(model, state_dict):
    """timm models convert foreign checkpoints with a per-module `checkpoint_filter_fn`."""
    import sys

    module = sys.modules.get(type(model).__module__)
    fn = getattr(module, "checkpoint_filter_fn", None) if module else None
    if fn is None or not type(model).__module__.startswith("timm."):
        return None
    try:
        try:
            return fn(dict(state_dict), model)
        except TypeError:
            return fn(dict(state_dict))
    except Exception:
        return None


def load_into(model, state_dict: dict, head_prefixes, source: str = "weights") -> bool:
    """Load `state_dict` into `model` (see fit_state_dict); True when the head was loaded too."""
    fitted = fit_state_dict(model, state_dict, head_prefixes, source)
    model.load_state_dict(fitted, strict=False)
    head = [k for k in model.state_dict() if _is_head(k, head_prefixes)]
    return bool(head) and all(k in fitted for k in head)


# -- public verbs ---------------------------------------------------------------------------


def load_pretrained(model_name: str, home: str | Path | None = None) -> dict[str, Any]:
    """The pre-trained state dict of `model_name` from an imported file or a local cache; never
    downloads. Raises WeightsUnavailable (with how to get them) when there are none."""
    found = _find_weights(model_name, model_family(model_name), home)
    if found is None:
        raise WeightsUnavailable(how_to_get(model_name))
    source, path = found
    try:
        return read_state_dict(path)
    except ValueError as exc:
        raise WeightsUnavailable(
            f"{exc} ({source}). Remove the file and pull or import the weights again."
        ) from None


def import_weights(
    model: str, file: str | Path, home: str | Path | None = None, *, by: dict[str, Any]
) -> Path:
    """Check that `file` holds weights for `model` and store them as
    <home>/weights/<model>.safetensors, recording who imported them; returns that path."""
    from safetensors.torch import save_file

    store.check_permission(by, "import_weights")  # before reading a file of any size
    model_family(model)
    state_dict = read_state_dict(file)
    reference = reference_model(model)
    fitted = fit_state_dict(reference, state_dict, head_prefixes(reference), str(file))
    del reference
    target = imported_path(model, home)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    # safetensors refuses tensors that share memory (tied weights): give each its own copy.
    save_file({k: v.detach().clone().contiguous() for k, v in fitted.items()}, str(partial))
    partial.replace(target)
    db = store.connect(home)
    try:
        store.record_weights(db, model, str(target), str(file), by=by)
    finally:
        db.conn.close()
    return target


def pull_weights(model: str) -> str:
    """Download `model`'s weights into timm's or torchvision's cache (needs internet); returns
    the cached file's path."""
    family = model_family(model)
    try:
        if family == "torchvision":
            weights_enum = _torchvision_weights(model)
            check_reachable(weights_enum.url, model)
            weights_enum.get_state_dict(progress=True)
        else:
            import timm

            cfg = _timm_pretrained_cfg(model)
            if cfg is None or not (cfg.hf_hub_id or cfg.url):
                raise WeightsUnavailable(
                    f"timm publishes no pre-trained weights for {model}: pick a name with weights "
                    "(timm.list_pretrained()) or import a file with "
                    f"`visionboard weights import {model} FILE`"
                )
            hub = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
            check_reachable(hub if cfg.hf_hub_id else cfg.url, model)
            timm.create_model(WEIGHT_SOURCES.get(model, model), pretrained=True)
    except WeightsUnavailable:
        raise
    except Exception as exc:
        raise WeightsUnavailable(
            f"could not download weights for {model} ({type(exc).__name__}: {exc}). This needs "
            "internet access; on a machine without it, download the file elsewhere and run "
            f"`visionboard weights import {model} FILE`."
        ) from None
    if family == "torchvision":
        path = _torchvision_cache_file(model)
    else:
        path = (_timm_cache_file(model) or (None, None))[1]
    if path is None or not path.is_file():
        raise WeightsUnavailable(
            f"downloaded weights for {model} but cannot find them in the cache"
        )
    return str(path)


def check_reachable(url: str, model: str, timeout: float = REACH_TIMEOUT_SECONDS) -> None:
    """Raise WeightsUnavailable in seconds when `url`'s host does not answer (no DNS, no route),
    instead of leaving the download library to retry for a minute. Behind a proxy the proxy
    knows the way, so nothing is checked."""
    if any(os.environ.get(k) for k in PROXY_VARIABLES):
        return
    parsed = urlparse(url)
    host = parsed.hostname
    if not host:
        return
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        raise WeightsUnavailable(
            f"cannot reach {host} to download weights for {model} ({exc}): this machine looks "
            "offline. Download the file on a machine with internet and run "
            f"`visionboard weights import {model} FILE` here."
        ) from None
