"""A reward learnt from human judgments in a CSV file: likes / dislikes, or scores, of labelled images.

The CSV has a header and one row per judged image::

    prompt,image,label
    "exactly 5 dogs on a beach",imgs/0001.png,like
    "exactly 5 dogs on a beach",imgs/0002.png,dislike

* ``prompt``: the prompt the image was generated for.
* ``image``: the image file; a relative path is resolved against the CSV's folder.
* ``label``: ``1`` / ``0``, ``like`` / ``dislike``, ``yes`` / ``no``, ``true`` / ``false`` (any case),
  or instead a ``score`` column: a float (higher is better).

The whole file is checked when the reward is built (before any model is loaded): a missing file,
no rows, missing columns, missing image files, unknown labels or bad scores give ONE
:class:`HumanCSVError` listing the offending CSV lines.

As a reward (:class:`HumanCSVReward`), :meth:`~HumanCSVReward.load` embeds the labelled images and
their prompts with a frozen open_clip model and fits a small model on the features: a logistic
regression for labels (the score of a new image is the predicted probability of a like) or a ridge
regression for scores (the predicted score). As an offline preference set,
:meth:`~HumanCSVReward.preference_groups` returns the judged images grouped by prompt with
group-relative advantages, like a rollout group.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from tdmr1_lightning.losses import group_advantages
from tdmr1_lightning.reward import Reward, RewardOutput

from ._clip import ClipEncoder, ModelSpec, Precision, load_open_clip, model_key, resolve_device

POSITIVE = frozenset({"1", "1.0", "like", "liked", "yes", "y", "true", "t"})
NEGATIVE = frozenset({"0", "0.0", "dislike", "disliked", "no", "n", "false", "f"})
MAX_LISTED = 20
FEATURES = ("image_product", "image", "concat")


class HumanCSVError(ValueError):
    """Everything wrong with a human-label CSV, in one error.

    Attributes:
        path: the CSV file.
        problems: ``(line, message)`` pairs; ``line`` is the CSV line number (the header is line 1), or
            ``None`` for a problem of the whole file.
    """

    def __init__(self, path: Path, problems: list[tuple[int | None, str]]) -> None:
        self.path = path
        self.problems = problems
        rows = [(line, msg) for line, msg in problems if line is not None]
        general = [msg for line, msg in problems if line is None]
        parts = [f"human-label CSV {path}: " + "; ".join(general) if general else f"human-label CSV {path}:"]
        if rows:
            lines = sorted({line for line, _ in rows})
            parts.append(f"{len(rows)} problem(s) on {len(lines)} row(s):")
            parts += [f"  line {line}: {msg}" for line, msg in rows[:MAX_LISTED]]
            if len(rows) > MAX_LISTED:
                parts.append(f"  ... and {len(rows) - MAX_LISTED} more")
        super().__init__("\n".join(parts))


@dataclass(frozen=True)
class LabelledImage:
    """One judged image of the CSV."""

    line: int
    """CSV line number (the header is line 1)."""
    prompt: str
    image: Path
    """Absolute path of the image."""
    target: float
    """1.0 (like) / 0.0 (dislike), or the score."""


@dataclass
class PreferenceGroup:
    """The judged images of one prompt, with group-relative advantages (one offline rollout group).

    ``K`` is the number of judged images of the prompt.
    """

    prompt: str
    images: list[Path]
    """``K`` image files."""
    lines: list[int]
    """``K`` CSV line numbers."""
    rewards: Tensor
    """``(K,)`` float32: 1 / 0 for likes / dislikes, or the scores."""
    advantages: Tensor
    """``(K,)`` float32: ``(r - mean_group r) / (std + eps)``, clipped (``losses.group_advantages``)."""

    def load_images(self) -> list[Tensor]:
        """The ``K`` images as ``uint8`` ``(3, H, W)`` tensors (sizes may differ)."""
        return [read_image(p) for p in self.images]


def read_image(path: str | Path) -> Tensor:
    """An image file as an RGB ``uint8`` ``(3, H, W)`` tensor."""
    from PIL import Image

    with Image.open(path) as img:
        rgb = img.convert("RGB")
        w, h = rgb.size
        data = bytearray(rgb.tobytes())
    return torch.frombuffer(data, dtype=torch.uint8).view(h, w, 3).permute(2, 0, 1).contiguous()


# ----------------------------------------------------------------------------------------- the CSV
def read_labels(path: str | Path, target: Literal["label", "score"] | None = None) -> tuple[list[LabelledImage], str]:
    """Parse and check a human-label CSV; cheap (no image is opened, only their existence checked).

    Args:
        path: the CSV file.
        target: the column to learn, ``label`` or ``score``; ``None``: ``label`` when the CSV has one,
            else ``score``.

    Returns:
        The rows, and the target used (``label`` or ``score``).

    Raises:
        HumanCSVError: listing every problem found (CSV line numbers).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise HumanCSVError(path, [(None, "file not found" if not path.exists() else "not a file")])
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise HumanCSVError(path, [(None, f"not UTF-8 text ({err})")]) from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if not header or not any(h.strip() for h in header):
        raise HumanCSVError(
            path, [(None, "empty file: no header row (expected columns prompt, image, label or score)")]
        )
    columns = {h.strip().lower(): i for i, h in reversed(list(enumerate(header)))}
    if target not in (None, "label", "score"):
        raise ValueError(f"target must be 'label', 'score' or None, got {target!r}")
    if target is None:
        target = "label" if "label" in columns or "score" not in columns else "score"
    missing = [c for c in ("prompt", "image", target) if c not in columns]
    if missing:
        want = (
            "prompt, image and label (or score)"
            if target == "label" and "score" not in columns
            else f"prompt, image and {target}"
        )
        raise HumanCSVError(
            path,
            [
                (
                    None,
                    f"missing column(s) {', '.join(missing)}; "
                    f"found {', '.join(h.strip() for h in header)}; need {want}",
                )
            ],
        )

    base = path.parent
    rows: list[LabelledImage] = []
    problems: list[tuple[int | None, str]] = []
    start = reader.line_num + 1
    for record in reader:
        line, start = start, reader.line_num + 1
        if not any(cell.strip() for cell in record):
            continue  # blank line
        if len(record) != len(header):
            problems.append((line, f"{len(record)} fields where the header has {len(header)}"))
            continue
        prompt = record[columns["prompt"]].strip()
        image = record[columns["image"]].strip()
        value = record[columns[target]].strip()
        row_problems = []
        if not prompt:
            row_problems.append("empty prompt")
        image_path = None
        if not image:
            row_problems.append("empty image path")
        else:
            image_path = Path(image).expanduser()
            image_path = (image_path if image_path.is_absolute() else base / image_path).resolve()
            if not image_path.is_file():
                row_problems.append(f"image {image!r} not found ({image_path})")
        parsed = _parse_target(value, target)
        if isinstance(parsed, str):
            row_problems.append(parsed)
        if row_problems:
            problems += [(line, msg) for msg in row_problems]
        else:
            rows.append(LabelledImage(line, prompt, image_path, parsed))
    if not rows and not problems:
        problems.append((None, "no rows (only a header)"))
    if rows and not problems:
        targets = {r.target for r in rows}
        if len(targets) < 2:
            what = (
                ("all labels are likes" if 1.0 in targets else "all labels are dislikes")
                if target == "label"
                else "all scores are equal"
            )
            problems.append((None, f"{what}: nothing to learn from {len(rows)} row(s); the file needs both kinds"))
    if problems:
        raise HumanCSVError(path, problems)
    return rows, target


def _parse_target(value: str, target: str) -> float | str:
    if target == "label":
        v = value.lower()
        if v in POSITIVE:
            return 1.0
        if v in NEGATIVE:
            return 0.0
        return f"unknown label {value!r} (expected 1/0, like/dislike, yes/no or true/false)"
    try:
        score = float(value)
    except ValueError:
        return f"score {value!r} is not a number"
    return score if math.isfinite(score) else f"score {value!r} is not finite"


# ----------------------------------------------------------------------------------------- the fitted model
class LinearHead(nn.Module):
    """The fitted model: standardise the features, then a linear map (a sigmoid on top for labels).

    Args:
        dim: feature size.
        logistic: output ``sigmoid(logit)`` (labels) rather than the linear value (scores).
    """

    def __init__(self, dim: int, logistic: bool) -> None:
        super().__init__()
        self.logistic = logistic
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.linear = nn.Linear(dim, 1)

    def logit(self, x: Tensor) -> Tensor:
        return self.linear((x - self.mean) / self.std).squeeze(-1)

    def forward(self, x: Tensor) -> Tensor:
        out = self.logit(x)
        return torch.sigmoid(out) if self.logistic else out


def combine_features(image: Tensor, text: Tensor, kind: str) -> Tensor:
    """The regression input from unit-norm image and prompt features ``(N, D)``.

    ``image_product``: ``[image, image * text]`` (2D; the image's own quality plus its per-dimension
    agreement with the prompt); ``image``: the image alone (D); ``concat``: ``[image, text]`` (2D).
    """
    if kind == "image_product":
        return torch.cat([image, image * text], dim=-1)
    if kind == "image":
        return image
    if kind == "concat":
        return torch.cat([image, text], dim=-1)
    raise ValueError(f"features must be one of {FEATURES}, got {kind!r}")


def fit_head(x: Tensor, y: Tensor, logistic: bool, l2: float, steps: int) -> LinearHead:
    """Fit :class:`LinearHead` on ``x (n, d)``, ``y (n,)``: deterministic, in float64 on the CPU.

    Labels: L2-penalised logistic regression by LBFGS (``steps`` iterations, strong Wolfe line search),
    loss ``mean BCE + l2 / 2 * |w|^2``. Scores: ridge regression in closed form,
    ``min mean (y - x w - b)^2 + l2 * |w|^2``.
    """
    x = x.detach().double().cpu()
    y = y.detach().double().cpu()
    n, d = x.shape
    mean = x.mean(0)
    std = x.std(0, unbiased=False).clamp_min(1e-6)
    z = (x - mean) / std
    if logistic:
        w = torch.zeros(d, dtype=torch.float64, requires_grad=True)
        b = torch.zeros((), dtype=torch.float64, requires_grad=True)
        with torch.no_grad():
            p = y.mean().clamp(1e-3, 1 - 1e-3)
            b.fill_(math.log(p / (1 - p)))
        opt = torch.optim.LBFGS(
            [w, b],
            lr=1.0,
            max_iter=steps,
            tolerance_grad=1e-10,
            tolerance_change=1e-14,
            history_size=20,
            line_search_fn="strong_wolfe",
        )

        def closure() -> Tensor:
            opt.zero_grad()
            logit = z @ w + b
            # mean BCE with logits, written out (the fused float64 CPU kernel is ~100x slower here)
            loss = (nn.functional.softplus(logit) - y * logit).mean() + 0.5 * l2 * (w * w).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        w, b = w.detach(), b.detach()
    else:
        y_mean = y.mean()
        gram = z.T @ z / n + l2 * torch.eye(d, dtype=torch.float64)
        w = torch.linalg.solve(gram, z.T @ (y - y_mean) / n)
        b = y_mean
    head = LinearHead(d, logistic)
    with torch.no_grad():
        head.mean.copy_(mean)
        head.std.copy_(std)
        head.linear.weight.copy_(w.view(1, d))
        head.linear.bias.copy_(b.view(1))
    return head.eval().requires_grad_(False)


def _metrics(head: LinearHead, x: Tensor, y: Tensor, prefix: str) -> dict[str, float]:
    with torch.no_grad():
        pred = head(x.float())
    y = y.float()
    if head.logistic:
        p = pred.clamp(1e-7, 1 - 1e-7)
        return {
            f"{prefix}_accuracy": float(((pred > 0.5).float() == y).float().mean()),
            f"{prefix}_log_loss": float(-(y * p.log() + (1 - y) * (1 - p).log()).mean()),
        }
    mse = float(((pred - y) ** 2).mean())
    var = float(((y - y.mean()) ** 2).mean())
    return {f"{prefix}_rmse": math.sqrt(mse), f"{prefix}_r2": 1 - mse / var if var > 0 else float("nan")}


def _split(targets: Tensor, fraction: float, logistic: bool, seed: int) -> tuple[Tensor, Tensor]:
    """Training / held-out row indices; stratified by class for labels, never emptying a class."""
    if fraction <= 0:
        return torch.arange(len(targets)), torch.zeros(0, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    strata = [torch.nonzero(targets == c).flatten() for c in (0.0, 1.0)] if logistic else [torch.arange(len(targets))]
    train, held = [], []
    for idx in strata:
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = min(int(round(fraction * len(idx))), len(idx) - (1 if logistic else 2))
        k = max(k, 0)
        held.append(idx[:k])
        train.append(idx[k:])
    return torch.cat(train).sort().values, torch.cat(held).sort().values


# ----------------------------------------------------------------------------------------- the reward
class HumanCSVReward(Reward):
    """Reward learnt from human likes / dislikes (or scores) in a CSV: a small model on frozen CLIP features.

    The CSV (columns ``prompt``, ``image``, and ``label`` or ``score``; see the module docs) is checked
    when the reward is built. On the first call the labelled images and prompts are embedded by a frozen
    open_clip model (the features are cached next to the CSV, keyed by a hash of the CSV, the image
    files' sizes and times, and the model), and a linear model is fitted on
    :func:`combine_features` of them: an L2-penalised logistic regression for labels (a new image
    scores the predicted probability of a like, in [0, 1]) or a ridge regression for scores (the
    predicted score). A stratified ``holdout`` share of the rows is first held out to measure the fit;
    the final model is then fitted on every row. :attr:`fit_report` holds the numbers (rows, likes,
    ``train_accuracy`` / ``holdout_accuracy`` and log losses, or ``train_r2`` / ``holdout_r2`` and
    RMSEs).

    Args:
        csv_path: the CSV of judgments.
        target: learn the ``label`` or the ``score`` column; default: ``label`` if present, else ``score``.
        model: open_clip model name (``ViT-L-14``), ``local-dir:/folder``, ``hf-hub:org/repo``, or an
            architecture dict in open_clip's config format.
        pretrained: open_clip pretrained tag (``openai``) or a local checkpoint file; ``None`` for random
            weights (tests only).
        features: the regression input: ``image_product`` (image features and their elementwise
            product with the prompt's), ``image`` (image only) or ``concat`` (image and prompt).
        l2: L2 penalty of the regression (on standardised features).
        steps: LBFGS iterations of the logistic regression.
        holdout: share of the rows held out to report the accuracy of the fit (0 disables it).
        seed: seed of the held-out split.
        cache_features: cache the CLIP features of the labelled images next to the CSV.
        precision: ``fp32``, ``fp16`` or ``bf16`` CLIP weights.
        batch_size: images per forward pass.
    """

    def __init__(
        self,
        csv_path: str,
        target: Literal["label", "score"] | None = None,
        model: ModelSpec = "ViT-L-14",
        pretrained: str | None = "openai",
        features: Literal["image_product", "image", "concat"] = "image_product",
        l2: float = 1e-2,
        steps: int = 200,
        holdout: float = 0.2,
        seed: int = 0,
        cache_features: bool = True,
        precision: Precision = "fp32",
        batch_size: int = 32,
    ) -> None:
        if features not in FEATURES:
            raise ValueError(f"features must be one of {FEATURES}, got {features!r}")
        if not 0 <= holdout < 1:
            raise ValueError(f"holdout must be in [0, 1), got {holdout}")
        if l2 < 0 or steps < 1 or batch_size < 1:
            raise ValueError(f"need l2 >= 0, steps >= 1 and batch_size >= 1; got {l2}, {steps}, {batch_size}")
        self.csv_path = Path(csv_path).expanduser().resolve()
        self.rows, self.target = read_labels(self.csv_path, target)
        self._csv_sha256 = hashlib.sha256(self.csv_path.read_bytes()).hexdigest()  # the rows' version
        self.model = model
        self.pretrained = pretrained
        self.features = features
        self.l2 = float(l2)
        self.steps = int(steps)
        self.holdout = float(holdout)
        self.seed = int(seed)
        self.cache_features = cache_features
        self.precision = precision
        self.batch_size = int(batch_size)
        self.head: LinearHead | None = None
        self.fit_report: dict[str, Any] = {}
        self._encoder: ClipEncoder | None = None

    # ------------------------------------------------------------------ fitting
    def load(self) -> None:
        if self.head is not None:  # already fitted (e.g. before a deep copy or a device change)
            self.head = self.head.to(self.device)
            return
        image, text = self.labelled_features()
        x = combine_features(image, text, self.features).cpu()
        y = torch.tensor([r.target for r in self.rows], dtype=torch.float64)
        logistic = self.target == "label"
        report: dict[str, Any] = {"target": self.target, "rows": len(self.rows), "features": self.features}
        if logistic:
            report["likes"] = int(y.sum())
            report["dislikes"] = int(len(y) - y.sum())
        train, held = _split(y, self.holdout, logistic, self.seed)
        if len(held):
            split_head = fit_head(x[train], y[train], logistic, self.l2, self.steps)
            report.update(train_rows=len(train), holdout_rows=len(held))
            report.update(_metrics(split_head, x[held], y[held], "holdout"))
        head = fit_head(x, y, logistic, self.l2, self.steps)
        report.update(_metrics(head, x, y, "train"))
        self.fit_report = report
        self.head = head.to(self.device)

    def labelled_features(self) -> tuple[Tensor, Tensor]:
        """CLIP features ``(n, D)`` of the labelled images and of their prompts (from the cache file if valid)."""
        enc = self.encoder
        cache = self.cache_path if self.cache_features else None
        if cache is not None and cache.is_file():
            try:
                saved = torch.load(cache, map_location="cpu", weights_only=True)
                image, text = saved["image"], saved["text"]
                if image.shape == text.shape == (len(self.rows), enc.embed_dim):
                    return image.float(), text.float()
            except Exception as err:  # a corrupt or foreign file: recompute
                warnings.warn(f"ignoring unreadable feature cache {cache}: {err}", RuntimeWarning)
        image_chunks, problems = [], []
        for start in range(0, len(self.rows), self.batch_size):
            chunk = self.rows[start : start + self.batch_size]
            pictures = []
            for row in chunk:
                try:
                    pictures.append(read_image(row.image))
                except Exception as err:
                    problems.append((row.line, f"cannot read image {row.image}: {type(err).__name__}: {err}"))
            if not problems:
                image_chunks.append(enc.encode_images(pictures, self.batch_size).cpu())
        if problems:
            raise HumanCSVError(self.csv_path, problems)
        image = torch.cat(image_chunks)
        text = enc.encode_text([r.prompt for r in self.rows], self.batch_size).cpu()
        if cache is not None:
            try:
                tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")  # several processes may write
                torch.save({"image": image, "text": text}, tmp)
                tmp.replace(cache)
            except OSError as err:
                warnings.warn(f"cannot write the feature cache {cache}: {err}", RuntimeWarning)
        return image, text

    @property
    def cache_path(self) -> Path:
        """Where the labelled images' CLIP features are cached (beside the CSV; keyed by its content and the model)."""
        h = hashlib.sha256(self._csv_sha256.encode())
        for row in self.rows:
            st = row.image.stat()
            h.update(f"{row.image}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        h.update(f"{model_key(self.model)}|{self.pretrained}|{self.precision}".encode())
        return self.csv_path.parent / f".{self.csv_path.stem}.clip-features-{h.hexdigest()[:16]}.pt"

    @property
    def encoder(self) -> ClipEncoder:
        """The CLIP encoder, loaded (or taken from the shared cache) on first use."""
        enc = self._encoder
        if enc is None or enc.device != resolve_device(self.device):
            enc = self._encoder = load_open_clip(self.model, self.pretrained, self.device, self.precision)
        return enc

    @property
    def encoder_loaded(self) -> bool:
        """Whether this reward holds its encoder now (not before the first use, nor in a fresh copy)."""
        return self._encoder is not None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(vars(self))
        state["_encoder"] = None  # shared and not picklable; fetched again when needed
        return state

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def score(self, images: Tensor, prompts: list[str], metadata: list[dict]) -> RewardOutput:
        enc = self.encoder
        image = enc.encode_images(images, self.batch_size)
        text = enc.encode_text(prompts, self.batch_size) if self.features != "image" else image
        head = self.head.to(image.device)
        return RewardOutput(scores=head(combine_features(image, text, self.features)).float().cpu())

    # ------------------------------------------------------------------ offline preferences
    def preference_groups(
        self,
        std: Literal["group", "global"] = "group",
        clip: float = 5.0,
        binarize: bool = False,
        include_uniform: bool = False,
    ) -> list[PreferenceGroup]:
        """The judgments grouped by prompt, with group-relative advantages: an offline preference set.

        Needs no model. Returns one :class:`PreferenceGroup` per prompt, in the CSV's order of first
        appearance: ``K`` images (paths and CSV lines), ``rewards (K,)`` (1 / 0 for likes / dislikes, or
        the scores) and ``advantages (K,)`` computed as for a rollout group
        (:func:`tdmr1_lightning.losses.group_advantages`): likes above the group mean get positive
        advantages, dislikes negative ones.

        Args:
            std: divide the centred rewards by each group's std (``group``) or by the std of all rows
                (``global``, the paper's choice for rollouts).
            clip: advantage clip.
            binarize: use ``sign(A) - mean(sign(A))`` (over all returned rows).
            include_uniform: keep groups without contrast (one image, or all likes / all dislikes /
                equal scores), whose advantages are all 0.
        """
        order: dict[str, list[LabelledImage]] = {}
        for row in self.rows:
            order.setdefault(row.prompt, []).append(row)
        kept = [rows for rows in order.values() if include_uniform or len({r.target for r in rows}) > 1]
        if not kept:
            return []
        rewards = torch.tensor([r.target for rows in kept for r in rows], dtype=torch.float32)
        group = torch.tensor([g for g, rows in enumerate(kept) for _ in rows])
        valid = torch.ones_like(rewards, dtype=torch.bool)
        scale = None
        if std == "global":
            scale = rewards.double().std(unbiased=False).float()
        elif std != "group":
            raise ValueError(f"std must be 'group' or 'global', got {std!r}")
        adv = group_advantages(rewards, valid, group, std=scale, clip=clip, binarize=binarize)
        out, start = [], 0
        for rows in kept:
            k = len(rows)
            out.append(
                PreferenceGroup(
                    prompt=rows[0].prompt,
                    images=[r.image for r in rows],
                    lines=[r.line for r in rows],
                    rewards=rewards[start : start + k].clone(),
                    advantages=adv[start : start + k].clone(),
                )
            )
            start += k
        return out


__all__ = [
    "HumanCSVError",
    "HumanCSVReward",
    "LabelledImage",
    "LinearHead",
    "PreferenceGroup",
    "combine_features",
    "fit_head",
    "read_image",
    "read_labels",
]
