"""Shared pytest fixtures.

Importing this module forces Hugging Face libraries offline so that no test can
ever reach the network; every model used by the tests is built locally with
random weights (see :mod:`tdmr1_lightning.tiny`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Make the package importable when it is not pip-installed (plain `pytest` from the repo root).
_REPO_ROOT = str(Path(__file__).resolve().parents[1])
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

import pytest  # noqa: E402

QUIET_TRAINER = (
    "--trainer.limit_val_batches=0",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
)


@pytest.fixture(scope="session")
def quiet_trainer() -> tuple[str, ...]:
    """`tdmr1 fit` arguments of a test's trainer: no validation loop, progress bar or model summary
    (a test adds its own root dir, logger, steps and callbacks)."""
    return QUIET_TRAINER


@pytest.fixture(scope="session")
def tiny_sd3_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder holding the default tiny SD3 pipeline (built once per test session).

    Load it with ``diffusers.StableDiffusion3Pipeline.from_pretrained(tiny_sd3_path)``.
    Images are 32x32 (``tdmr1_lightning.tiny.build_tiny_sd3`` defaults).
    """
    from tdmr1_lightning.tiny import build_tiny_sd3

    return build_tiny_sd3(tmp_path_factory.mktemp("tiny_sd3"))
