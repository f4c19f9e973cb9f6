"""Model files that ship with the project, the commands that rebuild them, and the tools that ship them.

A folder of shipped files holds an ``ASSETS.json`` manifest: for each entry (a file or a folder,
relative to the manifest) a description and the commands that regenerate it. When a configured path
is missing, :func:`check_asset` finds the manifest of the nearest existing ancestor folder and, if
the path is one of its entries, raises :class:`MissingAssetError` with those commands instead of a
bare "no such file" deep inside a loader.

Shipping (``tdmr1 assets``)::

    tdmr1 assets pipeline SRC DST [--dtype float16]   # a pipeline folder, weights cast
    tdmr1 assets lora CKPT DST.safetensors [--dtype float16] [--role fake]
                      # the generator (EMA) or fake-score adapter of a run's checkpoint, or any LoRA file

Casting to float16 halves the files; loading casts back to the backbone's dtype.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from .files import install_folder

MANIFEST = "ASSETS.json"

__all__ = ["MANIFEST", "MissingAssetError", "asset_entry", "check_asset", "main", "ship_lora", "ship_pipeline"]


class MissingAssetError(FileNotFoundError):
    """A shipped file (listed in an ``ASSETS.json``) is missing; the message says how to rebuild it."""


def asset_entry(path: str | os.PathLike) -> tuple[Path, str, dict[str, Any]] | None:
    """``(manifest, key, entry)`` of the manifest that lists ``path``, or None.

    The manifest is the first ``ASSETS.json`` found from the nearest existing ancestor of ``path``
    upwards; its entries are keyed by paths relative to it.
    """
    path = Path(path).expanduser().absolute()
    folder = path.parent
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    for candidate in (folder, *folder.parents):
        manifest = candidate / MANIFEST
        if manifest.is_file():
            try:
                entries = json.loads(manifest.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return None
            key = path.relative_to(candidate).as_posix()
            entry = entries.get(key)
            return (manifest, key, entry) if isinstance(entry, dict) else None
    return None


def check_asset(path: str | os.PathLike, what: str) -> Path:
    """Return ``path`` if it exists; if it is a missing shipped asset, raise :class:`MissingAssetError`.

    Args:
        path: The configured file or folder.
        what: The config key that named it (for the message).

    Returns:
        ``path`` (a missing path that no manifest lists is returned too: the caller's own checks decide).
    """
    path = Path(path).expanduser()
    if path.exists():
        return path
    found = asset_entry(path)
    if found is None:
        return path
    manifest, key, entry = found
    commands = "\n".join(f"    {c}" for c in entry.get("rebuild", []))
    raise MissingAssetError(
        f"{what}: {path} is missing. It is a shipped asset ({entry.get('description', key)}; listed in {manifest}); "
        f"restore it from the repository (git checkout -- {path}) or rebuild it with:\n{commands}"
    )


_DTYPES = ("float32", "float16", "bfloat16")


def _cast(tensors: dict[str, Any], dtype: str) -> dict[str, Any]:
    import torch

    target = getattr(torch, dtype)
    return {k: (v.to(target) if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}


def ship_pipeline(src: str | os.PathLike, dst: str | os.PathLike, dtype: str = "float16") -> Path:
    """Copy a pipeline folder to ``dst`` with every safetensors file cast to ``dtype``.

    Written beside ``dst`` first and renamed into place, so an interrupted copy never replaces a good
    folder with half of one.
    """
    from safetensors.torch import load_file, save_file

    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
    src, dst = Path(src), Path(dst)
    if not (src / "model_index.json").is_file():
        raise FileNotFoundError(f"{src} is not a pipeline folder (no model_index.json)")
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    for file in tmp.rglob("*.safetensors"):
        save_file(_cast(load_file(str(file)), dtype), str(file), metadata={"format": "pt"})
    for config in tmp.rglob("*config.json"):
        data = json.loads(config.read_text(encoding="utf-8"))
        data.pop("_name_or_path", None)  # where it was built: meaningless elsewhere
        for key in ("torch_dtype", "dtype"):  # loaders read the dtype from here; keep it truthful
            if key in data and config.name == "config.json":
                data[key] = dtype
        config.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return install_folder(tmp, dst)


def ship_lora(
    checkpoint: str | os.PathLike,
    dst: str | os.PathLike,
    dtype: str = "float16",
    role: str = "generator",
    lora_alpha: float | None = None,
) -> Path:
    """Write ``role``'s LoRA of ``checkpoint`` (a run's ``.ckpt``: for the generator its EMA; or any LoRA
    file :func:`~tdmr1_lightning.backbones.lora_files.read_lora_file` reads) to a safetensors file that
    states its rank and alpha (``lora_alpha`` for a source that does not state its own)."""
    from safetensors.torch import save_file

    from .backbones.lora_files import lora_metadata, read_lora_file

    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
    lora = read_lora_file(checkpoint, role, "checkpoint")
    if lora.tensors is None:
        raise ValueError(f"{lora.where}: an unnamed (ordered) LoRA is loaded into a backbone, not shipped as it is")
    if lora.stated and lora_alpha is not None and float(lora_alpha) != lora.alpha:
        raise ValueError(f"{lora.where} states lora_alpha {lora.alpha:g}, not {lora_alpha:g}")
    alpha = lora.alpha if lora.stated or lora_alpha is None else lora_alpha
    if alpha is None:
        raise ValueError(f"{lora.where} does not state its LoRA alpha: give it with --lora-alpha")
    state = _cast(lora.tensors, dtype)
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    save_file(state, str(tmp), metadata={**lora_metadata(lora.rank, alpha), "source": Path(checkpoint).name})
    os.replace(tmp, dst)
    return dst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tdmr1 assets", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pipeline", help="copy a pipeline folder with its weights cast to --dtype")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--dtype", default="float16", choices=_DTYPES)
    lo = sub.add_parser("lora", help="write a run checkpoint's generator (EMA) or fake-score LoRA as safetensors")
    lo.add_argument("checkpoint")
    lo.add_argument("dst")
    lo.add_argument("--dtype", default="float16", choices=_DTYPES)
    lo.add_argument("--role", default="generator", choices=["generator", "fake"])
    lo.add_argument("--lora-alpha", type=float, help="the LoRA alpha of a checkpoint that does not state it")
    args = parser.parse_args(argv)
    try:
        if args.command == "pipeline":
            out = ship_pipeline(args.src, args.dst, args.dtype)
        else:
            out = ship_lora(args.checkpoint, args.dst, args.dtype, args.role, args.lora_alpha)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    size = sum(f.stat().st_size for f in ([out] if out.is_file() else out.rglob("*")) if f.is_file())
    print(f"{out} ({size / 2**20:.1f} MiB)")
    return 0
