"""Resolve a model reference (local folder or hub id) cheaply, before any weights load."""

from __future__ import annotations

import os

from ..assets import check_asset


class ModelNotFoundError(FileNotFoundError):
    """A model path or hub id that cannot be used."""


def _offline() -> bool:
    return any(
        os.environ.get(v, "").lower() in {"1", "true", "yes", "on"} for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def resolve_pretrained(
    name_or_path: str | os.PathLike, revision: str | None = None, index_file: str = "model_index.json"
) -> str:
    """Return a local folder or a hub id that ``from_pretrained`` can load, or raise ModelNotFoundError.

    A local folder must hold ``index_file`` (a path from a config resolves against the config's
    folder). A hub id is accepted when it is cached or the hub can be reached; with
    ``HF_HUB_OFFLINE=1`` an uncached id fails here, naming it, instead of deep inside the loader after
    other models have loaded.
    """
    path = check_asset(name_or_path, "pretrained_model")
    name_or_path = str(name_or_path)  # as written: a hub id when no such folder exists
    if path.is_dir():
        if not (path / index_file).is_file():
            raise ModelNotFoundError(
                f"pretrained_model {name_or_path!r}: folder has no {index_file}; is it a diffusers pipeline folder?"
            )
        return str(path)
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    looks_local = (
        name_or_path.startswith((".", "/", "~"))
        or name_or_path.count("/") > 1
        or os.sep in name_or_path.replace("/", "")
    )
    try:
        if looks_local:
            raise HFValidationError("local path")
        validate_repo_id(name_or_path)
    except HFValidationError:
        raise ModelNotFoundError(
            f"pretrained_model {name_or_path!r}: no such local folder, and not a valid hub id"
        ) from None
    cached = try_to_load_from_cache(name_or_path, index_file, revision=revision)
    if isinstance(cached, str):
        return name_or_path
    if _offline():
        raise ModelNotFoundError(
            f"pretrained_model {name_or_path!r}: not a local folder and not in the hub cache, and the hub is "
            "offline (HF_HUB_OFFLINE=1). Download it on a connected machine or pass a local folder."
        )
    return name_or_path
