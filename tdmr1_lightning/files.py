"""Writing files safely: JSON Lines, PNG images and whole folders (installed atomically).

One place for what several commands write, so a crash never leaves a half-written prompt file or model
folder where a finished one was.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from torch import Tensor


def write_jsonl(records: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """Write ``records`` as JSON Lines to ``path`` (creating its folder); an existing file is replaced whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            for record in records:
                fh.write(json.dumps(record, default=str) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_png(image: Tensor, path: str | Path) -> Path:
    """Write a ``uint8`` image ``(3, H, W)`` as a PNG (creating its folder)."""
    from torchvision.io import write_png as _encode_and_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _encode_and_write(image.cpu(), str(path))
    return path


def install_folder(tmp: Path, directory: Path) -> Path:
    """Move the finished folder ``tmp`` to ``directory``, replacing what is there.

    ``os.replace`` is atomic for a missing or empty target; an existing, non-empty target is moved
    aside first and deleted once the new folder is in place.
    """
    try:
        os.replace(tmp, directory)
        return directory
    except OSError:
        if not directory.exists() or not any(directory.iterdir()):
            raise
    old = directory.parent / f".{directory.name}.old-{uuid.uuid4().hex[:8]}"
    os.replace(directory, old)
    try:
        os.replace(tmp, directory)
    finally:
        shutil.rmtree(old, ignore_errors=True)
    return directory
