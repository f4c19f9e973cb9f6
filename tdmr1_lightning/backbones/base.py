"""What TDM-R1 needs of a rectified-flow text-to-image model, independent of the model family.

A backbone owns the frozen parts (text encoders, VAE, the teacher) and the trained roles
(docs/architecture.md, "Roles"). A new family (Z-Image, FLUX) is one new file: load the pipeline,
encode prompts, decode latents, call its transformer. Role bookkeeping lives in
:class:`RoleTransformers`, shared by every family whose denoiser is one ``nn.Module``.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from .lora_files import LORA_FILE_SUFFIXES, LoraCheckpointError, LoraFile, read_lora_file  # noqa: F401 (re-exported)
from .roles import (  # noqa: F401 (re-exported)
    EMA_SOURCES,
    FAKE,
    GENERATOR,
    GENERATOR_EMA,
    SURROGATE,
    SURROGATE_OLD,
    SURROGATE_REF,
    TEACHER,
    TRAINED_ROLES,
)

RolesAs = Literal["lora", "full"]


@dataclass
class Condition:
    """Prompt conditioning: named tensors whose first dimension is the batch."""

    tensors: dict[str, Tensor]

    def __len__(self) -> int:
        return next(iter(self.tensors.values())).shape[0]

    def __getitem__(self, index: Tensor | slice) -> Condition:
        return Condition({k: v[index] for k, v in self.tensors.items()})

    def repeat(self, n: int) -> Condition:
        """Repeat a condition of batch size 1 (the null prompt) ``n`` times."""
        return Condition({k: v.expand(n, *v.shape[1:]) for k, v in self.tensors.items()})

    @staticmethod
    def cat(conditions: Sequence[Condition]) -> Condition:
        keys = conditions[0].tensors.keys()
        return Condition({k: torch.cat([c.tensors[k] for c in conditions]) for k in keys})


def ema_update_(target: Sequence[Tensor], source: Sequence[Tensor], decay: float) -> None:
    """``target <- decay * target + (1 - decay) * source``, in place, for matching tensor lists."""
    if len(target) != len(source):
        raise ValueError(f"EMA: {len(target)} target tensors but {len(source)} source tensors")
    with torch.no_grad():
        torch._foreach_lerp_(list(target), [s.to(t.dtype) for s, t in zip(source, target)], 1.0 - decay)


def unique_tensor_bytes(module: nn.Module) -> int:
    """Bytes of parameters and buffers held by ``module``, each storage counted once."""
    seen: set[int] = set()
    total = 0
    for t in [*module.parameters(), *module.buffers()]:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in seen:
            seen.add(ptr)
            total += t.untyped_storage().nbytes()
    return total


# --------------------------------------------------------------------------------------------
# Role adapters (or copies) on one denoiser
# --------------------------------------------------------------------------------------------

DEFAULT_LORA_TARGETS = (
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_q_proj",
    "attn.add_k_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
)
"""The reference's LoRA targets: the joint attention's projections (``attn.*``; SD3.5's second,
image-only attention ``attn2`` has none), matched as peft matches them (the name, or its end after a dot)."""


def matches_targets(name: str, targets: Sequence[str]) -> bool:
    """Whether a module name is a LoRA target, by peft's rule for a list of target names."""
    return any(name == t or name.endswith(f".{t}") for t in targets)


class RoleTransformers(nn.Module):
    """The roles of section 2 on one denoiser: LoRA adapters on shared frozen weights, or full copies.

    In ``lora`` mode there is one set of base weights; the teacher is the base with adapters
    disabled and every other role is an adapter (initialised with B = 0, so equal to the teacher).
    In ``full`` mode each role is a full copy of the base, which stays the frozen teacher.

    With ``gradient_checkpointing`` the denoiser's blocks recompute their activations in the
    backward pass. In ``lora`` mode that recomputation runs after other roles have been queried, so
    each checkpointed block records the role it ran as and recomputes as that role (its own LoRA
    layers switched for the duration): every role's gradient equals the one without checkpointing.
    """

    def __init__(
        self,
        base: nn.Module,
        roles: Iterable[str],
        roles_as: RolesAs = "lora",
        lora_rank: int = 32,
        lora_alpha: float = 64.0,
        lora_target_modules: Sequence[str] = DEFAULT_LORA_TARGETS,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.roles = [r for r in roles if r != TEACHER]
        unknown = set(self.roles) - set(TRAINED_ROLES) - set(EMA_SOURCES)
        if unknown:
            raise ValueError(f"unknown roles {sorted(unknown)}")
        self.roles_as = roles_as
        self.lora_rank, self.lora_alpha = lora_rank, float(lora_alpha)
        self.lora_target_modules = tuple(lora_target_modules)
        self.base = base.requires_grad_(False).eval()
        self._active: str | None = None
        self.sharded = False  # set by shard_
        if roles_as == "lora":
            from peft import LoraConfig
            from peft.tuners.tuners_utils import BaseTunerLayer

            for role in self.roles:
                config = LoraConfig(
                    r=lora_rank,
                    lora_alpha=lora_alpha,
                    init_lora_weights="gaussian",
                    target_modules=list(lora_target_modules),
                )
                with warnings.catch_warnings():  # several adapters on one model is the design, not an accident
                    warnings.filterwarnings("ignore", message=".*multiple adapters.*")
                    base.add_adapter(config, adapter_name=role)
            self._tuner_layers = [m for m in base.modules() if isinstance(m, BaseTunerLayer)]
            self._role_names = {
                role: sorted(n for n, _ in base.named_parameters() if f".{role}." in n and ".lora_" in n)
                for role in self.roles
            }
            # Each LoRA layer's adapter tensors (by name: a sharding strategy registers new parameter objects)
            # and whether they train, to undo peft's requires_grad changes.
            self._trainable_flags = {
                layer: [
                    (n, n.split(".")[1] in TRAINED_ROLES) for n, _ in layer.named_parameters() if n.startswith("lora_")
                ]
                for layer in self._tuner_layers
            }
            for layer, flags in self._trainable_flags.items():
                for name, _ in flags:
                    param = layer.get_parameter(name)
                    param.data = param.data.float()  # adapters train in fp32 over a low-precision base
            self._restore_trainable(self._tuner_layers)
            self._block_layers: dict[nn.Module, list[nn.Module]] = {}
            if gradient_checkpointing:
                _enable_checkpointing(base, self._checkpoint_as_active_role)
        elif roles_as == "full":
            self.copies = nn.ModuleDict({role: copy.deepcopy(base) for role in self.roles})
            for role, module in self.copies.items():
                module.requires_grad_(role in TRAINED_ROLES).train(role in TRAINED_ROLES)
                if gradient_checkpointing and role in TRAINED_ROLES:
                    _enable_checkpointing(module)  # a copy is its role: recomputation needs no switching
        else:
            raise ValueError(f"roles_as must be 'lora' or 'full', got {roles_as!r}")
        for role in self.roles:  # an EMA starts as its source (LoRA A matrices are drawn per adapter)
            if EMA_SOURCES.get(role) in self.roles:
                self.copy_role_(role, EMA_SOURCES[role])

    # -- role selection -----------------------------------------------------------------------

    def _restore_trainable(self, layers: Iterable[nn.Module]) -> None:
        # peft's set_adapter flips requires_grad to follow the active adapter; our trained roles keep
        # requiring grad so that switching roles between a forward and its backward changes nothing.
        for layer in layers:
            for name, trainable in self._trainable_flags[layer]:
                layer.get_parameter(name).requires_grad_(trainable)

    def _switch_layers(self, layers: Sequence[nn.Module], role: str) -> None:
        """Make ``layers`` (LoRA layers of the base) compute ``role``."""
        for layer in layers:
            if role == TEACHER:
                layer.enable_adapters(False)
            else:
                layer.enable_adapters(True)
                layer.set_adapter(role)
        self._restore_trainable(layers)

    @contextlib.contextmanager
    def _block_as(self, block: nn.Module, role: str) -> Iterator[None]:
        """Within the context, ``block``'s LoRA layers compute ``role``, whichever role is active."""
        if role == self._active:
            yield
            return
        layers = self._block_layers.get(block)
        if layers is None:
            layers = self._block_layers[block] = [m for m in block.modules() if m in self._trainable_flags]
        self._switch_layers(layers, role)
        try:
            yield
        finally:
            self._switch_layers(layers, self._active)

    def _checkpoint_as_active_role(self, block: nn.Module, *args):
        """Activation checkpointing of one block whose recomputation runs as the role of its forward."""
        role = self._active
        return torch.utils.checkpoint.checkpoint(
            block.__call__,
            *args,
            use_reentrant=False,
            context_fn=lambda: (contextlib.nullcontext(), self._block_as(block, role)),
        )

    def activate(self, role: str) -> nn.Module:
        """Return the module that computes ``role`` (switching the active adapter where needed)."""
        if role != TEACHER and role not in self.roles:
            raise KeyError(f"role {role!r} was not built; built roles: {[TEACHER, *self.roles]}")
        if self.roles_as == "full":
            return self.base if role == TEACHER else self.copies[role]
        if role != self._active:
            self._switch_layers(self._tuner_layers, role)
            self._active = role
        return self.base

    @contextlib.contextmanager
    def merged(self, role: str) -> Iterator[nn.Module]:
        """Within the block, ``role``'s adapter is folded into the base weights: plain-transformer speed.

        For inference only (no gradients). The base weights are copied first and restored exactly
        afterwards, so the teacher never drifts by merge / unmerge rounding.
        """
        if self.roles_as == "full" or role == TEACHER or self.sharded:  # a shard cannot fold B A in
            yield self.activate(role)
            return
        module = self.activate(role)
        layers = [layer for layer in self._tuner_layers if role in getattr(layer, "lora_A", {})]
        saved = [layer.get_base_layer().weight.detach().clone() for layer in layers]
        try:
            with torch.no_grad():
                for layer in layers:
                    layer.merge(adapter_names=[role])
            yield module
        finally:
            with torch.no_grad():
                for layer, weight in zip(layers, saved):
                    layer.get_base_layer().weight.copy_(weight)
                    layer.merged_adapters.clear()

    def denoisers(self) -> list[nn.Module]:
        """Every denoiser module: the base (the teacher, and the adapters in ``lora`` mode) and any copies."""
        return [self.base, *(self.copies.values() if self.roles_as == "full" else ())]

    def shard_(self, blocks: Callable[[nn.Module], Sequence[nn.Module]], mesh, mp_policy=None) -> None:
        """FSDP2: shard each denoiser's ``blocks(denoiser)`` one by one, then the rest of it, over ``mesh``.

        Frozen weights are sharded too; a block's LoRA adapters (every role's) are sharded with it, so a
        role's forward gathers its block's base weights and adapters together.
        """
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = mp_policy or MixedPrecisionPolicy()
        for denoiser in self.denoisers():
            for block in blocks(denoiser):
                fully_shard(block, mesh=mesh, mp_policy=policy)
            fully_shard(denoiser, mesh=mesh, mp_policy=policy)
        self.sharded = True

    # -- parameters ---------------------------------------------------------------------------

    def parameters_of(self, role: str) -> list[nn.Parameter]:
        """The parameters that define ``role``, in an order shared by all roles."""
        if role == TEACHER:
            return [p for n, p in self.base.named_parameters() if ".lora_" not in n]
        if self.roles_as == "full":
            return list(self.copies[role].parameters())
        params = dict(self.base.named_parameters())
        return [params[n] for n in self._role_names[role]]

    def copy_role_(self, target: str, source: str) -> None:
        with torch.no_grad():
            for t, s in zip(self.parameters_of(target), self.parameters_of(source)):
                t.copy_(s)

    def ema_update_(self, target: str, decay: float) -> None:
        ema_update_(self.parameters_of(target), self.parameters_of(EMA_SOURCES[target]), decay)

    def is_role_state(self, key: str) -> bool:
        """Whether a ``state_dict`` key (relative to this module) belongs to a role, not the frozen base."""
        return ".lora_" in key if self.roles_as == "lora" else key.startswith("copies.")

    # -- LoRA checkpoints ---------------------------------------------------------------------

    def lora_layer_names(self) -> list[str]:
        """Names of the denoiser's LoRA target layers, in module order (the order of an adapter's tensors)."""
        module = self.base if self.roles_as == "lora" else next(iter(self.copies.values()), self.base)
        return [name for name, _ in module.named_modules() if matches_targets(name, self.lora_target_modules)]

    def load_lora_(self, role: str, lora: LoraFile, scale: float = 1.0) -> int:
        """Start ``role`` from a LoRA file, its update multiplied by ``scale``; returns the tensors loaded.

        Raises :class:`LoraCheckpointError` naming the file and the first key that matches no LoRA
        layer, or whose shape differs. In ``full`` mode the update ``scale * alpha / rank * B A`` is
        added to the role's copy.
        """
        lora.check(self.lora_rank, self.lora_alpha)
        state = lora.named(self.lora_layer_names())
        layers = set(self.lora_layer_names())
        shapes = self._lora_shapes(role)
        unmatched = [k for k in state if k.rpartition(".lora_")[0] not in layers]
        if unmatched:
            raise LoraCheckpointError(
                f"{lora.where}: {len(unmatched)} of {len(state)} keys match no LoRA layer of the transformer "
                f"(lora_target_modules: {list(self.lora_target_modules)}); first unmatched key: {unmatched[0]!r}"
            )
        wrong = [
            f"{k}: file {tuple(v.shape)} vs model {shapes[k]}" for k, v in state.items() if tuple(v.shape) != shapes[k]
        ]
        if wrong:
            raise LoraCheckpointError(f"{lora.where}: {len(wrong)} shapes differ, first {wrong[0]}")
        with torch.no_grad():
            if self.roles_as == "lora":
                params = dict(self.base.named_parameters())
                for key, value in state.items():
                    head, _, tail = key.rpartition(".lora_")
                    which, _, rest = tail.partition(".")
                    params[f"{head}.lora_{which}.{role}.{rest}"].copy_(value * scale if which == "B" else value)
            else:
                modules = dict(self.copies[role].named_modules())
                for head in {k.rpartition(".lora_")[0] for k in state}:
                    a, b = state[f"{head}.lora_A.weight"].float(), state[f"{head}.lora_B.weight"].float()
                    weight = modules[head].weight
                    weight.add_((scale * self.lora_alpha / self.lora_rank * (b @ a)).to(weight.dtype))
        return len(state)

    def _lora_shapes(self, role: str) -> dict[str, tuple[int, ...]]:
        """The shape of each ``<layer>.lora_A.weight`` / ``.lora_B.weight`` an adapter of this rank has."""
        module = self.base if self.roles_as == "lora" else self.copies[role]
        modules = dict(module.named_modules())
        shapes = {}
        for name in self.lora_layer_names():
            linear = modules[name].get_base_layer() if hasattr(modules[name], "get_base_layer") else modules[name]
            out_features, in_features = linear.weight.shape
            shapes[f"{name}.lora_A.weight"] = (self.lora_rank, in_features)
            shapes[f"{name}.lora_B.weight"] = (out_features, self.lora_rank)
        return shapes


def _enable_checkpointing(denoiser: nn.Module, checkpoint_fn=None) -> None:
    """Turn on a diffusers denoiser's activation checkpointing (with ``checkpoint_fn`` per block if given)."""
    if not getattr(denoiser, "_supports_gradient_checkpointing", False):
        raise ValueError(f"gradient_checkpointing: {type(denoiser).__name__} does not support activation checkpointing")
    denoiser.enable_gradient_checkpointing(gradient_checkpointing_func=checkpoint_fn)


# --------------------------------------------------------------------------------------------
# The interface the LightningModule uses
# --------------------------------------------------------------------------------------------


class RectifiedFlowBackbone(nn.Module, ABC):
    """A text-to-image rectified-flow model with TDM-R1 roles.

    Construction is cheap and validates arguments; :meth:`build` loads the networks (called from the
    LightningModule's ``configure_model`` so a sharded strategy can wrap each role).
    """

    roles: RoleTransformers

    @abstractmethod
    def build(self, roles: Sequence[str]) -> None:
        """Load the networks and create ``roles`` (a subset of the trained and EMA roles)."""

    @abstractmethod
    def transformer_forward(self, module: nn.Module, x: Tensor, t: Tensor, cond: Condition) -> Tensor:
        """Call the denoiser ``module`` on latents ``x`` at float32 timesteps ``t = 1000 s``; return the velocity.

        Pass ``t`` on in float32: a family's timestep embedding computes its sinusoids in float32.
        """

    @abstractmethod
    def encode_prompts(self, prompts: list[str]) -> Condition:
        """Frozen text conditioning for ``prompts``."""

    @abstractmethod
    def null_condition(self, n: int) -> Condition:
        """The empty-prompt conditioning (for classifier-free guidance), repeated ``n`` times."""

    @abstractmethod
    def decode(self, latents: Tensor) -> Tensor:
        """Latents to ``uint8`` images ``(N, 3, H, W)``."""

    @property
    @abstractmethod
    def latent_shape(self) -> tuple[int, int, int]:
        """``(C, h, w)`` of one latent at the configured resolution."""

    @property
    def device(self) -> torch.device:
        return next(self.roles.base.parameters()).device

    # FSDP2 (``tdmr1_lightning.sharding``): a family names its denoiser's repeated blocks to be sharded.
    shards_blocks: bool = False

    def denoiser_blocks(self, denoiser: nn.Module) -> Sequence[nn.Module]:
        """The repeated blocks of ``denoiser`` that FSDP2 shards one by one (set ``shards_blocks`` with it)."""
        raise NotImplementedError(f"{type(self).__name__} does not name its denoiser's blocks")

    def shard_(self, mesh, mp_policy=None) -> None:
        """Shard every role's denoiser over ``mesh`` (FSDP2), block by block; call after :meth:`build`."""
        self.roles.shard_(self.denoiser_blocks, mesh, mp_policy)

    def is_role_state(self, key: str) -> bool:
        """Whether a ``state_dict`` key of this backbone is role weights worth checkpointing (not frozen parts)."""
        return key.startswith("roles.") and self.roles.is_role_state(key[len("roles.") :])

    def velocity(self, role: str, x: Tensor, s: float | Tensor, cond: Condition) -> Tensor:
        """The velocity of ``role`` at ``(x, s)``; ``s`` is one level for the batch or one per sample."""
        module = self.roles.activate(role)
        # float32 whatever the weights' dtype: in bfloat16, t = 750 would reach the network as 752
        t = (1000.0 * torch.as_tensor(s, device=x.device, dtype=torch.float32)).expand(x.shape[0])
        return self.transformer_forward(module, x, t, cond).to(x.dtype)

    def velocity_cond_uncond(self, role: str, x: Tensor, s: float, cond: Condition) -> tuple[Tensor, Tensor]:
        """Conditional and unconditional velocities of ``role`` in one batched forward."""
        n = x.shape[0]
        both = self.velocity(role, torch.cat([x, x]), s, Condition.cat([cond, self.null_condition(n)]))
        return both[:n], both[n:]

    def guided_velocity(self, role: str, x: Tensor, s: float, cond: Condition, scale: float) -> Tensor:
        """Classifier-free guidance ``v_u + w (v_c - v_u)``; one forward when ``w == 1``."""
        if scale == 1.0:
            return self.velocity(role, x, s, cond)
        vc, vu = self.velocity_cond_uncond(role, x, s, cond)
        return vu + scale * (vc - vu)
