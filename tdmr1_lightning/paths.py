"""Input paths in configs: a relative path written in a config file resolves against that file's folder.

So ``tdmr1 fit --config /abs/path/configs/tiny.yaml`` runs from any working directory. A path given on
the command line resolves against the working directory, as usual. Outputs (``default_root_dir``,
``out_dir``) are plain strings and stay relative to the working directory, where runs belong.
"""

from __future__ import annotations

import os
from typing import Any

from jsonargparse import Namespace
from jsonargparse.typing import Path, path_type

ConfigPath = path_type("", docstring="a file or folder; relative to the config file's folder when written in one")
"""Type of an argument naming an input file or folder (no existence check at parse time: the consumer checks)."""


def resolve_existing(value: Any) -> Any:
    """Replace, in a parsed config, every path that exists by its absolute form (recursively).

    A saved copy of the config (the run's ``config.yaml``) then names the same files from wherever
    it is read. A path that does not exist is kept as written, with the folder it is relative to: it
    may be a hub id (``pretrained_model``), and a missing file's error names where it was looked for.
    """
    if isinstance(value, Path):
        absolute = os.fspath(value)
        return type(value)(absolute) if os.path.exists(absolute) else value
    if isinstance(value, Namespace):
        for key, item in vars(value).items():
            setattr(value, key, resolve_existing(item))
        return value
    if isinstance(value, list):
        return [resolve_existing(item) for item in value]
    if isinstance(value, dict):
        return {key: resolve_existing(item) for key, item in value.items()}
    return value
