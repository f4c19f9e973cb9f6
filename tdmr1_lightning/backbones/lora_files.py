"""LoRA files on disk: the formats a role can start from, with the rank and alpha each one states.

A LoRA adds ``scale * (alpha / rank) * B @ A`` to a weight. Loading one into a role adapter of another
rank or alpha would silently change that update, so a file's rank and alpha are checked against the
backbone's ``lora_rank`` and ``lora_alpha`` when the backbone is built (before any model loads).

Formats read (never executing pickled code):

* **diffusers / PEFT state dicts** (``.safetensors``, or a torch file): keys
  ``[transformer.|base_model.model.]<module>.lora_A.weight`` / ``.lora_B.weight``, or kohya's
  ``lora_down`` / ``lora_up`` with per-module ``.alpha`` tensors. The alpha comes from the ``.alpha``
  tensors, from diffusers' ``lora_adapter_metadata`` (``lora_alpha``), or from a PEFT
  ``adapter_config.json`` beside the file (a PEFT ``save_pretrained`` folder may be given as the
  path); a file that states none has ``alpha = rank``, as diffusers reads it. The TDM SD3 LoRA is of
  this kind (applied at ``scale`` 0.125).
* **the authors' EMA checkpoints** (``.ckpt``: ``{"decay", "ema_parameters": [tensors]}``; the TDM
  SD3.5 LoRA, TDM-R1's ``ema.ckpt``): the adapter's tensors in the order of the transformer's
  LoRA layers (A, then B, layer by layer), without names, trained with ``LoraConfig(r=32,
  lora_alpha=64)`` on the attention projections ``attn.*``: the order is rebuilt from the
  transformer's modules and ``lora_target_modules``, the alpha is taken as ``2 * rank``.
* **this project's Lightning checkpoints**: the role's adapter (the generator: its EMA), with the
  rank and alpha the checkpoint records (checkpoints written before they recorded them state none,
  and are loaded at the configured alpha).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..assets import check_asset
from ..sharding import is_sharded_checkpoint, read_checkpoint
from .roles import EMA_SOURCES, GENERATOR, GENERATOR_EMA, TRAINED_ROLES

LORA_FILE_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
CHECKPOINT_LORA_KEY = "tdmr1_lora"
"""Key of a Lightning checkpoint of this project under which the role adapters' rank and alpha are recorded."""
METADATA_KEY = "lora_adapter_metadata"
"""diffusers' safetensors metadata key of a LoRA's config.

(``r``, ``lora_alpha``, optionally prefixed ``transformer.``)
"""
_SUFFIX_ALIASES = {".lora_down.": ".lora_A.", ".lora_up.": ".lora_B."}
_PREFIXES = ("backbone.roles.base.", "base_model.model.", "transformer.", "model.diffusion_model.", "diffusion_model.")
_PEFT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


class LoraCheckpointError(ValueError):
    """A LoRA checkpoint that cannot be loaded into a role."""


@dataclass
class LoraFile:
    """A LoRA read from disk: its tensors, and the rank and alpha the file states."""

    path: Path
    key: str
    """The config key that named the file (for messages)."""
    format: str
    rank: int
    alpha: float | None
    """The alpha the update was trained with; ``None`` when unknown (this project's checkpoints from
    before it was recorded: loaded at the configured alpha)."""
    stated: bool = True
    """Whether the file states ``alpha`` (else it is the format's convention: ``rank`` for diffusers)."""
    tensors: dict[str, Tensor] | None = None
    """Normalised ``<module>.lora_A.weight`` / ``<module>.lora_B.weight`` tensors (named formats)."""
    ordered: list[Tensor] | None = None
    """The adapter's tensors in LoRA-layer order, A then B (the authors' EMA checkpoints)."""

    @property
    def where(self) -> str:
        return f"{self.key}: {self.path} ({self.format})"

    def check(self, rank: int, alpha: float) -> None:
        """Raise :class:`LoraCheckpointError` naming the setting when the file's rank or alpha differs."""
        if self.rank != rank:
            raise LoraCheckpointError(
                f"{self.where} is a rank-{self.rank} LoRA but lora_rank is {rank}: set lora_rank: {self.rank}"
            )
        if self.alpha is not None and float(self.alpha) != float(alpha):
            raise LoraCheckpointError(
                f"{self.where} was trained with lora_alpha {self.alpha:g} but lora_alpha is {alpha:g}: "
                f"set lora_alpha: {self.alpha:g} "
                "(the update is scaled by alpha / rank)"
            )

    def named(self, layer_names: list[str]) -> dict[str, Tensor]:
        """The tensors by name; an ordered file is matched to ``layer_names`` (the LoRA layers in module order)."""
        if self.tensors is not None:
            return self.tensors
        assert self.ordered is not None
        if len(self.ordered) != 2 * len(layer_names):
            raise LoraCheckpointError(
                f"{self.where} holds {len(self.ordered)} tensors, "
                f"but the transformer's {len(layer_names)} LoRA layers need "
                f"{2 * len(layer_names)} (A and B each): is lora_target_modules the one it was trained with?"
            )
        return {
            f"{name}.lora_{ab}.weight": t
            for i, name in enumerate(layer_names)
            for ab, t in zip("AB", self.ordered[2 * i : 2 * i + 2])
        }


def read_lora_file(path: str | os.PathLike, role: str = GENERATOR, key: str = "generator_checkpoint") -> LoraFile:
    """Read a LoRA file (or a PEFT adapter folder) of any format above, for ``role`` (see the module doc)."""
    path = check_asset(path, key)
    sharded = is_sharded_checkpoint(path)  # a checkpoint folder saved under fsdp2
    if path.is_dir() and not sharded:
        found = [path / name for name in _PEFT_FILES if (path / name).is_file()]
        if not found:
            raise LoraCheckpointError(
                f"{key}: {path} is a folder without {' or '.join(_PEFT_FILES)} (a PEFT adapter folder)"
            )
        path = found[0]
    if not path.is_file() and not sharded:
        raise LoraCheckpointError(f"{key}: no such file: {path}")
    if path.suffix not in LORA_FILE_SUFFIXES:
        raise LoraCheckpointError(
            f"{key}: {path} has suffix {path.suffix!r}; "
            f"expected one of {', '.join(LORA_FILE_SUFFIXES)} or a PEFT folder"
        )
    metadata: dict[str, str] = {}
    recorded: dict[str, Any] = {}
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            raw = {k: f.get_tensor(k) for k in f.keys()}
    else:
        try:
            raw = read_checkpoint(path) if sharded else torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # weights_only refuses pickled objects: say so plainly
            raise LoraCheckpointError(f"{key}: cannot read {path} as a tensor state dict: {err}") from err
        if isinstance(raw, dict) and isinstance(raw.get("ema_parameters"), (list, tuple)):
            return _ema_list(path, key, list(raw["ema_parameters"]))
        if isinstance(raw, dict) and isinstance(raw.get(CHECKPOINT_LORA_KEY), dict):
            recorded = raw[CHECKPOINT_LORA_KEY]
        for wrapper in ("state_dict", "module"):
            if isinstance(raw, dict) and isinstance(raw.get(wrapper), dict):
                raw = raw[wrapper]
    if not isinstance(raw, dict) or not all(isinstance(v, Tensor) for v in raw.values()):
        raise LoraCheckpointError(f"{key}: {path} is not a flat dictionary of tensors")
    if not any(".lora_" in k for k in raw):
        raise LoraCheckpointError(
            f"{key}: {path} holds no LoRA tensors "
            "(no key contains '.lora_A.', '.lora_B.', '.lora_down.' or '.lora_up.'); "
            f"first keys: {list(raw)[:3]}"
        )
    own = _own_checkpoint_role(raw, role, f"{key}: {path}")
    tensors, alphas = {}, set()
    for name, value in own.items():
        if name.endswith(".alpha"):
            alphas.add(float(value))
            continue
        if ".lora_" not in name:
            continue
        for old, new in _SUFFIX_ALIASES.items():
            name = name.replace(old, new)
        for prefix in _PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix) :]
        tensors[name] = value
    if not tensors:
        raise LoraCheckpointError(f"{key}: {path} holds no LoRA tensors")
    rank = _rank([t for k, t in tensors.items() if ".lora_A." in k], f"{key}: {path}")
    if own is not raw:  # a checkpoint of this project
        return LoraFile(
            path, key, "tdmr1 checkpoint", rank, recorded.get("alpha"), "alpha" in recorded, tensors=tensors
        )
    if len(alphas) > 1:
        raise LoraCheckpointError(
            f"{key}: {path} has different alphas per layer ({sorted(alphas)[:4]}): one alpha per adapter is supported"
        )
    alpha, fmt = _stated_alpha(path, metadata)
    if alphas:
        alpha, fmt = alphas.pop(), "kohya"
    return LoraFile(path, key, fmt, rank, rank if alpha is None else alpha, alpha is not None, tensors=tensors)


def _ema_list(path: Path, key: str, tensors: list) -> LoraFile:
    if not tensors or len(tensors) % 2 or not all(isinstance(t, Tensor) and t.dim() == 2 for t in tensors):
        raise LoraCheckpointError(
            f"{key}: {path}: 'ema_parameters' must be pairs of 2-D tensors (LoRA A and B per layer)"
        )
    rank = _rank(tensors[0::2], f"{key}: {path}")
    for i, (a, b) in enumerate(zip(tensors[0::2], tensors[1::2])):
        if b.shape[1] != a.shape[0]:
            raise LoraCheckpointError(
                f"{key}: {path}: tensors {2 * i} and {2 * i + 1} are not a LoRA pair: "
                f"A {tuple(a.shape)}, B {tuple(b.shape)}"
            )
    return LoraFile(path, key, "the authors' EMA checkpoint", rank, 2.0 * rank, False, ordered=tensors)


def _rank(a_matrices: list[Tensor], where: str) -> int:
    ranks = {int(a.shape[0]) for a in a_matrices}
    if len(ranks) != 1:
        raise LoraCheckpointError(
            f"{where} has LoRA layers of different ranks ({sorted(ranks)}): one rank per adapter is supported"
        )
    return ranks.pop()


def _stated_alpha(path: Path, metadata: dict[str, str]) -> tuple[float | None, str]:
    """The alpha in diffusers' safetensors metadata or a PEFT ``adapter_config.json`` beside the file."""
    if metadata.get(METADATA_KEY):
        config = json.loads(metadata[METADATA_KEY])
        for name in ("lora_alpha", "transformer.lora_alpha"):
            if name in config:
                return float(config[name]), "diffusers"
    peft_config = path.with_name("adapter_config.json")
    if peft_config.is_file():
        alpha = json.loads(peft_config.read_text(encoding="utf-8")).get("lora_alpha")
        if alpha is not None:
            return float(alpha), "PEFT"
    return None, "diffusers"


def _own_checkpoint_role(state: dict[str, Tensor], role: str, where: str) -> dict[str, Tensor]:
    """From a checkpoint of this project (role adapters by name), ``role``'s LoRA (the generator: its EMA first).

    A state dict without role names (a plain LoRA file) is returned as it is.
    """
    present = {r for k in state if ".lora_" in k for r in (*TRAINED_ROLES, *EMA_SOURCES) if f".{r}." in k}
    if not present:
        return state
    for candidate in (GENERATOR_EMA, GENERATOR) if role == GENERATOR else (role,):
        if candidate in present:
            infix = f".{candidate}."
            return {k.replace(infix, "."): v for k, v in state.items() if ".lora_" in k and infix in k}
    raise LoraCheckpointError(f"{where} holds no {role!r} adapter (it has {', '.join(sorted(present))})")


def lora_metadata(rank: int, alpha: float) -> dict[str, str]:
    """safetensors metadata stating a LoRA's rank and alpha, as diffusers writes it."""
    return {"format": "pt", METADATA_KEY: json.dumps({"r": rank, "lora_alpha": alpha}, sort_keys=True)}
