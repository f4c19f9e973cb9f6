"""Prompt sets for RL post-training, served in GRPO-style groups.

One RL step draws ``prompts_per_step`` (P) prompts across all processes and samples
each of them ``group_size`` (G) times, so rewards can be normalised within a group.
A group is held by one process, or shared by ``processes_per_group`` (q) processes that
each hold ``G / q`` of its samples (the reference runs groups of 24 as 12 or 6 a GPU).
The sampler hands each set of q processes its share of the step's prompts (P q / world
size), and the collate function repeats each prompt ``G / q`` times, so one DataLoader
batch is exactly one RL step's worth of samples for this process. Every sample carries
its group's index and its own index within the step (``group_index``, ``sample_index``),
the same on whichever process holds it.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
from collections.abc import Iterator, Sequence, Sized
from pathlib import Path
from typing import Any

import lightning
import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from .paths import ConfigPath

__all__ = [
    "GroupedPromptSampler",
    "PromptDataModule",
    "PromptDataset",
    "PromptFileError",
    "ResumableLoader",
    "collate_groups",
    "keyed_generator",
    "load_prompts",
    "split_records",
]

# Key under which PromptDataset records the dataset index; collate_groups turns it
# into ``prompt_index`` and strips it from the metadata.
_INDEX_KEY = "_index"


def run_seed(seed: int | None) -> int:
    """``seed``, or when it is ``None`` the run's global seed (``seed_everything`` / the CLI's
    ``--seed_everything``, which Lightning exports as ``PL_GLOBAL_SEED``), else 0."""
    if seed is not None:
        return int(seed)
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def keyed_generator(*key: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator seeded by a tuple of ints (e.g. seed, process, step): each key draws its own
    reproducible stream, whatever was drawn before, so a resumed run draws what an uninterrupted one would."""
    return torch.Generator(device).manual_seed(hash(key) % (2**62))


class PromptFileError(ValueError):
    """A prompt file is missing, empty or malformed."""


def load_prompts(path: str | Path) -> list[dict[str, Any]]:
    """Read prompts from a text, JSON Lines or JSON file.

    * ``.jsonl``: one JSON object a line with a non-empty string ``"prompt"``; every
      other key is per-prompt metadata (e.g. what a reward model needs) and is kept.
      Blank lines are skipped.
    * ``.json``: a JSON array whose items are prompt strings or objects as in
      ``.jsonl``.
    * anything else: plain text, one prompt a line; blank lines and lines starting
      with ``#`` are skipped, surrounding whitespace is stripped.

    Returns:
        Records ``{"prompt": str, **metadata}`` in file order.

    Raises:
        PromptFileError: naming the file (and the 1-based line or item) on any problem.
    """
    path = Path(path)
    if not path.exists():
        raise PromptFileError(f"{path}: prompt file does not exist")
    if not path.is_file():
        raise PromptFileError(f"{path}: prompt path is not a file")
    text = path.read_text(encoding="utf-8")

    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        records = _parse_jsonl(path, text)
    elif suffix == ".json":
        records = _parse_json(path, text)
    else:
        records = [
            {"prompt": stripped}
            for stripped in (line.strip() for line in text.splitlines())
            if stripped and not stripped.startswith("#")
        ]
    if not records:
        raise PromptFileError(f"{path}: file contains no prompts")
    return records


def _parse_jsonl(path: Path, text: str) -> list[dict[str, Any]]:
    records = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise PromptFileError(f"{where}: invalid JSON ({err.msg})") from err
        records.append(_check_record(obj, where))
    return records


def _parse_json(path: Path, text: str) -> list[dict[str, Any]]:
    try:
        items = json.loads(text) if text.strip() else []
    except json.JSONDecodeError as err:
        raise PromptFileError(f"{path}, line {err.lineno}: invalid JSON ({err.msg})") from err
    if not isinstance(items, list):
        raise PromptFileError(f"{path}: expected a JSON array of prompts, got {type(items).__name__}")
    return [
        _check_record({"prompt": item} if isinstance(item, str) else item, f"{path}, item {i}")
        for i, item in enumerate(items, start=1)
    ]


def _check_record(obj: Any, where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise PromptFileError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if "prompt" not in obj:
        raise PromptFileError(f"{where}: missing 'prompt' key")
    prompt = obj["prompt"]
    if not isinstance(prompt, str):
        raise PromptFileError(f"{where}: 'prompt' must be a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise PromptFileError(f"{where}: 'prompt' is empty")
    return {**obj, "prompt": prompt.strip()}


class PromptDataset(Dataset):
    """Prompt records, each returned with its dataset index under ``"_index"``.

    The index lets a training step tell which prompt a group came from (e.g. for
    logging per-prompt rewards) without relying on prompt strings being unique.
    """

    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self.records[index], _INDEX_KEY: index}


class GroupedPromptSampler(DistributedSampler):
    """Yields this process's prompt indices, one RL step of ``P_local`` at a time.

    An epoch is ``ceil(len(dataset) / P)`` global steps of ``P`` prompts each, taken
    in order from a permutation of the prompt indices (seeded with ``seed + epoch`` so
    every rank computes the same one; identity order when ``shuffle=False``). Within
    global step ``b``, rank ``r`` gets the contiguous slice
    ``[r * P_local, (r + 1) * P_local)`` of that step's prompts, with
    ``P_local = P // num_replicas``: the ranks split each step's prompts disjointly.

    Wrap-around: if ``len(dataset)`` is not a multiple of ``P`` (or is smaller than
    ``P``), the last step is filled from further permutations drawn from the same
    generator, so every step is full and every rank gets the same number of prompts.
    As a consequence a prompt can appear twice in an epoch, and in the last step (or
    in every step, when the dataset has fewer than ``P`` prompts) twice in one step.

    It subclasses :class:`DistributedSampler` so that Lightning leaves it in place in
    distributed runs instead of wrapping the DataLoader with its own sampler.
    """

    def __init__(
        self,
        dataset: Sized,
        prompts_per_step: int,
        num_replicas: int,
        rank: int,
        shuffle: bool = True,
        seed: int = 0,
    ) -> None:
        if prompts_per_step < 1:
            raise ValueError(f"prompts_per_step must be >= 1, got {prompts_per_step}")
        if num_replicas < 1:
            raise ValueError(f"num_replicas must be >= 1, got {num_replicas}")
        if prompts_per_step % num_replicas != 0:
            raise ValueError(
                f"prompts_per_step={prompts_per_step} must be divisible by the world size "
                f"({num_replicas}) so every process gets the same number of prompts per step"
            )
        if len(dataset) == 0:
            raise ValueError("cannot sample from an empty prompt dataset")
        # Explicit num_replicas/rank: the parent never touches torch.distributed.
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.prompts_per_step = prompts_per_step
        self.prompts_per_step_local = prompts_per_step // num_replicas
        self.num_steps = math.ceil(len(dataset) / prompts_per_step)
        # Keep the parent's bookkeeping attributes consistent with what we yield.
        self.total_size = self.num_steps * prompts_per_step
        self.num_samples = self.num_steps * self.prompts_per_step_local

    def _epoch_order(self) -> torch.Tensor:
        """Global order of ``total_size`` prompt indices for the current epoch."""
        n = len(self.dataset)
        repeats = math.ceil(self.total_size / n)
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(self.seed + self.epoch)
            pieces = [torch.randperm(n, generator=generator) for _ in range(repeats)]
        else:
            pieces = [torch.arange(n)] * repeats
        return torch.cat(pieces)[: self.total_size]

    def __iter__(self) -> Iterator[int]:
        steps = self._epoch_order().view(self.num_steps, self.prompts_per_step)
        start = self.rank * self.prompts_per_step_local
        local = steps[:, start : start + self.prompts_per_step_local]
        return iter(local.reshape(-1).tolist())

    def __len__(self) -> int:
        return self.num_samples


class ResumableLoader(DataLoader):
    """A training DataLoader, resumable in the middle of an epoch.

    Lightning saves :meth:`state_dict` in every checkpoint and hands it back to
    :meth:`load_state_dict` on ``--ckpt_path``; without it, a run resumed mid-epoch
    would start that epoch's order again from its first batch. The state is the
    epoch (the sampler's) and how many batches of it were handed out; the next
    iteration of that epoch skips them. The sampler's order must be a pure function
    of its seed and epoch (:class:`GroupedPromptSampler`, ``DistributedSampler``;
    Lightning calls their ``set_epoch``), so skipping reproduces the uninterrupted
    run. Batches are counted as they are handed out: Lightning does not prefetch a
    loader with a length, so at a checkpoint every batch handed out has been trained on.
    Skipped batches are still loaded (prompts, or scenes rendered in microseconds).
    """

    _resume_at: tuple[int, int] | None = None
    _position: tuple[int, int] | None = None

    def _epoch(self) -> int:
        return int(getattr(self.sampler, "epoch", 0))

    def __iter__(self) -> Iterator[Any]:
        # A generator: this body runs at the first ``next``, after Lightning's ``set_epoch`` for the epoch.
        epoch, resume = self._epoch(), self._resume_at
        self._resume_at = None
        skip = resume[1] if resume is not None and resume[0] == epoch else 0
        self._position = (epoch, skip)
        for i, batch in enumerate(super().__iter__()):
            if i < skip:
                continue
            self._position = (epoch, i + 1)
            yield batch

    def state_dict(self) -> dict[str, int]:
        epoch, batches = self._position if self._position is not None else (self._epoch(), 0)
        return {"epoch": epoch, "batches": batches}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        missing = {"epoch", "batches"} - set(state_dict)
        if missing:
            raise ValueError(f"the checkpoint's training-loader state lacks {sorted(missing)}: got {state_dict!r}")
        self._resume_at = (int(state_dict["epoch"]), int(state_dict["batches"]))


def collate_groups(
    records: list[dict[str, Any]], group_size: int, shares: int = 1, share: int = 0, first_group: int = 0
) -> dict[str, Any]:
    """Repeat each prompt record ``group_size / shares`` times, contiguously: this process's share of each group.

    Record ``i`` is the step's group ``g = first_group + i`` (``group_index``); its samples
    here are the group's draws ``share * group_size / shares`` onwards, and draw ``k`` of
    group ``g`` has ``sample_index`` ``g * group_size + k`` in the step. ``metadata`` is the
    record minus ``"prompt"`` (and ``"_index"``), copied per sample so a consumer mutating
    one sample's metadata cannot affect another. ``prompt_index`` (dataset indices) is
    present when the records came from a :class:`PromptDataset`.
    """
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if shares < 1 or group_size % shares or not 0 <= share < shares:
        raise ValueError(f"cannot take share {share} of {shares} of a group of {group_size}")
    copies = group_size // shares
    has_index = [_INDEX_KEY in r for r in records]
    if any(has_index) and not all(has_index):
        raise ValueError(f"either all records or none must carry {_INDEX_KEY!r}")

    prompts: list[str] = []
    metadata: list[dict[str, Any]] = []
    for record in records:
        meta = {k: v for k, v in record.items() if k not in ("prompt", _INDEX_KEY)}
        prompts.extend([record["prompt"]] * copies)
        metadata.extend(copy.deepcopy(meta) for _ in range(copies))

    group_index = (first_group + torch.arange(len(records), dtype=torch.long)).repeat_interleave(copies)
    draw = share * copies + torch.arange(copies, dtype=torch.long).repeat(len(records))
    batch: dict[str, Any] = {
        "prompts": prompts,
        "metadata": metadata,
        "group_index": group_index,
        "sample_index": group_index * group_size + draw,
    }
    if records and all(has_index):
        indices = torch.tensor([r[_INDEX_KEY] for r in records], dtype=torch.long)
        batch["prompt_index"] = indices.repeat_interleave(copies)
    return batch


class PromptDataModule(lightning.LightningDataModule):
    """Prompt sets for RL post-training: one training batch is one RL step.

    Each training batch holds this process's share of the step's samples
    (``prompts_per_step x group_size / world_size``): whole groups
    (``processes_per_group: 1``), or ``group_size / processes_per_group`` samples of each
    of the groups it shares with ``processes_per_group - 1`` other processes.

    Args:
        train_prompts: Training prompt file: ``.txt`` (one prompt a line, ``#``
            comments), ``.jsonl`` (objects with a ``"prompt"`` key plus metadata) or
            ``.json`` (an array of prompts or such objects).
        val_prompts: Optional validation prompt file, same formats; validation is
            skipped when it is not given.
        prompts_per_step: Distinct prompts per RL step across all processes; must be
            divisible by the number of processes / ``processes_per_group``.
        group_size: Samples generated per prompt in a step (the GRPO group size).
        processes_per_group: Processes that share each group (1: each process holds whole
            groups). Group means, the reward std and the surrogate's group sums are reduced
            across processes either way; with ``q > 1`` a process holds ``group_size / q``
            samples of each of its groups and its micro-batches may be smaller than a group.
        val_batch_size: Validation prompts per batch (each sampled once).
        shuffle: Shuffle the training prompts every epoch.
        shuffle_seed: Seed of the per-epoch prompt permutation (combined with the epoch); ``None``:
            the run's global seed (``seed_everything``), so one seed varies the whole run.
        num_workers: DataLoader worker processes.
    """

    def __init__(
        self,
        train_prompts: ConfigPath,
        val_prompts: ConfigPath | None = None,
        prompts_per_step: int = 48,
        group_size: int = 24,
        processes_per_group: int = 1,
        val_batch_size: int = 8,
        shuffle: bool = True,
        shuffle_seed: int | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        # Plain strings (a config's relative path made absolute) for the saved hyperparameters.
        train_prompts = os.fspath(train_prompts)
        val_prompts = os.fspath(val_prompts) if val_prompts is not None else None
        for name, value, minimum in (
            ("prompts_per_step", prompts_per_step, 1),
            ("group_size", group_size, 1),
            ("processes_per_group", processes_per_group, 1),
            ("val_batch_size", val_batch_size, 1),
            ("num_workers", num_workers, 0),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
        self.save_hyperparameters()
        self.hparams.shuffle_seed = shuffle_seed = run_seed(
            shuffle_seed
        )  # recorded resolved (the CLI saves its config's null)
        self.train_prompts = train_prompts
        self.val_prompts = val_prompts
        self.prompts_per_step = prompts_per_step
        self.group_size = group_size
        if group_size % processes_per_group:
            raise ValueError(
                f"data.group_size={group_size} does not split into "
                f"data.processes_per_group={processes_per_group} equal shares"
            )
        self.processes_per_group = processes_per_group
        self.val_batch_size = val_batch_size
        self.shuffle = shuffle
        self.shuffle_seed = shuffle_seed
        self.num_workers = num_workers
        # Load now so a bad prompt file fails before any model is built.
        self.train_records = load_prompts(train_prompts)
        self.val_records = load_prompts(val_prompts) if val_prompts is not None else None
        self.world_size: int | None = None
        self.rank: int | None = None

    def setup(self, stage: str | None = None) -> None:
        """Take the world size and rank from the trainer (1 and 0 without one)."""
        trainer = self.trainer
        world_size = trainer.world_size if trainer is not None else 1
        rank = trainer.global_rank if trainer is not None else 0
        q = self.processes_per_group
        if world_size % q:
            raise ValueError(
                f"data.processes_per_group={q} does not divide the world size ({world_size}): "
                "every group must be shared by the same number of processes"
            )
        if self.prompts_per_step % (world_size // q) != 0:
            raise ValueError(
                f"prompts_per_step={self.prompts_per_step} must be divisible by the world size "
                f"({world_size}) / data.processes_per_group ({q}) "
                "so every process gets the same number of prompts per step"
            )
        self.world_size, self.rank = world_size, rank

    @property
    def prompts_per_step_local(self) -> int:
        """Prompts (whole groups or shares of them) this process handles per RL step (after ``setup``)."""
        if self.world_size is None:
            raise RuntimeError("PromptDataModule.setup() has not been called yet")
        return self.prompts_per_step * self.processes_per_group // self.world_size

    @property
    def samples_per_group_local(self) -> int:
        """Samples of each of its groups that one process holds: ``group_size / processes_per_group``."""
        return self.group_size // self.processes_per_group

    @property
    def samples_per_step_local(self) -> int:
        """Samples this process generates per RL step (after ``setup``)."""
        return self.prompts_per_step_local * self.samples_per_group_local

    def train_dataloader(self) -> DataLoader:
        if self.world_size is None or self.rank is None:
            raise RuntimeError("PromptDataModule.setup() has not been called yet")
        q = self.processes_per_group
        # The q processes of a set draw the same prompts and take one share of each group.
        process_set, share = divmod(self.rank, q)
        sampler = GroupedPromptSampler(
            PromptDataset(self.train_records),
            prompts_per_step=self.prompts_per_step,
            num_replicas=self.world_size // q,
            rank=process_set,
            shuffle=self.shuffle,
            seed=self.shuffle_seed,
        )
        collate = functools.partial(
            collate_groups,
            group_size=self.group_size,
            shares=q,
            share=share,
            first_group=process_set * self.prompts_per_step_local,
        )
        return ResumableLoader(
            sampler.dataset,
            batch_size=self.prompts_per_step_local,
            sampler=sampler,
            collate_fn=collate,
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader | list:
        if self.val_records is None:
            return []
        return DataLoader(
            PromptDataset(self.val_records),
            batch_size=self.val_batch_size,
            shuffle=False,
            collate_fn=functools.partial(collate_groups, group_size=1),
            num_workers=self.num_workers,
        )

    def test_dataloader(self) -> DataLoader | list:
        """The validation prompts (``tdmr1 test`` scores the generator EMA on them)."""
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader | list:
        """The validation prompts (``tdmr1 predict`` returns the generator EMA's images for them)."""
        return self.val_dataloader()


ALL_TAG = "all"
"""The tag of every record when no record has one."""
UNTAGGED = "untagged"
"""The tag of a record without one when others have one."""


def split_records(records: Sequence[dict[str, Any]]) -> tuple[list[str], list[dict], list[str]]:
    """``(prompts, metadata, tags)`` of prompt records: the metadata is each record without its prompt;
    the tag is the metadata's ``tag`` (``untagged`` where missing), or ``all`` when no record has one."""
    prompts = [r["prompt"] for r in records]
    metadata = [{k: v for k, v in r.items() if k != "prompt"} for r in records]
    has_tags = any("tag" in m for m in metadata)
    tags = [str(m.get("tag", UNTAGGED)) if has_tags else ALL_TAG for m in metadata]
    return prompts, metadata, tags
