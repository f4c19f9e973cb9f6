"""Stable Diffusion 3 / 3.5 (MMDiT, rectified flow) over diffusers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from ..paths import ConfigPath
from .base import (
    DEFAULT_LORA_TARGETS,
    FAKE,
    GENERATOR,
    GENERATOR_EMA,
    Condition,
    LoraCheckpointError,
    LoraFile,
    RectifiedFlowBackbone,
    RolesAs,
    RoleTransformers,
    read_lora_file,
)
from .hub import resolve_pretrained

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class SD3Backbone(RectifiedFlowBackbone):
    """Stable Diffusion 3 / 3.5 with the TDM-R1 roles as LoRA adapters on one transformer (or full copies).

    Args:
        pretrained_model: A hub id (e.g. ``stabilityai/stable-diffusion-3.5-medium``) or a local
            diffusers pipeline folder (one with ``model_index.json``), loaded with ``from_pretrained``.
        resolution: Image height and width in pixels.
        roles_as: ``lora``: one set of base weights, roles as adapters, teacher = adapters disabled;
            ``full``: a full fine-tuned copy of the transformer per role.
        lora_rank: LoRA rank of every role adapter.
        lora_alpha: LoRA alpha (scale = alpha / rank).
        lora_target_modules: Layers that get adapters, matched as peft matches them (a name, or its end
            after a dot); default: the reference's joint-attention projections `attn.*` (not SD3.5's `attn2`).
        generator_checkpoint: Optional LoRA file to start the generator from (read without executing
            pickled code): a diffusers / PEFT / kohya LoRA (e.g. the TDM SD3 LoRA), a PEFT adapter
            folder, the authors' EMA ``.ckpt`` (the TDM SD3.5 LoRA, a TDM-R1 ``ema.ckpt``), or a
            checkpoint of this project (its generator EMA). Its rank and alpha must be
            ``lora_rank`` and ``lora_alpha`` (``backbones/lora_files.py`` says what each format states).
        generator_checkpoint_scale: Scale of the loaded LoRA's update (the TDM SD3 LoRA is applied at 0.125).
        fake_checkpoint: Optional LoRA state dict to start the fake score from (default: equal to the
            teacher). A checkpoint of this project gives its fake score: starting TDM-R1 with the
            critic of the TDM run that made the generator, the marginal-KL term is right from the
            first step instead of zero until the fake score has learnt the generator's samples.
        dtype: Storage dtype of the frozen weights (adapters always train in float32).
        max_sequence_length: T5 tokens per prompt.
        gradient_checkpointing: Recompute the transformer's activations in the backward pass to save
            memory; every role recomputes as itself, so the gradients equal those without it.
        revision: Hub revision (branch, tag or commit) of ``pretrained_model``.
        variant: Weight variant to load (e.g. ``fp16``).
    """

    def __init__(
        self,
        pretrained_model: ConfigPath,
        resolution: int = 512,
        roles_as: RolesAs = "lora",
        lora_rank: int = 32,
        lora_alpha: float = 64.0,
        lora_target_modules: Sequence[str] = DEFAULT_LORA_TARGETS,
        generator_checkpoint: ConfigPath | None = None,
        generator_checkpoint_scale: float = 1.0,
        fake_checkpoint: ConfigPath | None = None,
        dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        max_sequence_length: int = 256,
        gradient_checkpointing: bool = False,
        revision: str | None = None,
        variant: str | None = None,
    ) -> None:
        super().__init__()
        if resolution < 8:
            raise ValueError(f"resolution must be >= 8 pixels, got {resolution}")
        if lora_rank < 1:
            raise ValueError(f"lora_rank must be >= 1, got {lora_rank}")
        self.pretrained_model = resolve_pretrained(pretrained_model, revision=revision)
        # LoRA files are read now: a wrong format, rank, alpha or model family fails before any model loads.
        self.generator_lora = self._read_lora(
            generator_checkpoint, GENERATOR, "generator_checkpoint", lora_rank, lora_alpha
        )
        self.generator_checkpoint_scale = float(generator_checkpoint_scale)
        self.fake_lora = self._read_lora(fake_checkpoint, FAKE, "fake_checkpoint", lora_rank, lora_alpha)
        self.resolution = resolution
        self.roles_as = roles_as
        self.lora = dict(lora_rank=lora_rank, lora_alpha=lora_alpha, lora_target_modules=tuple(lora_target_modules))
        self.dtype = _DTYPES[dtype]
        self.max_sequence_length = max_sequence_length
        self.gradient_checkpointing = gradient_checkpointing
        self.revision, self.variant = revision, variant
        self._null: Condition | None = None

    # -- loading --------------------------------------------------------------------------------

    def build(self, roles: Sequence[str]) -> None:
        from diffusers import StableDiffusion3Pipeline

        pipe = StableDiffusion3Pipeline.from_pretrained(
            self.pretrained_model, dtype=self.dtype, revision=self.revision, variant=self.variant, **self._components()
        )
        # The pipeline shares these modules; kept outside nn.Module registration so it is not saved twice.
        object.__setattr__(self, "_pipe", pipe)
        transformer = pipe.transformer
        factor = self.latent_factor * transformer.config.patch_size
        if self.resolution % factor:
            raise ValueError(
                f"resolution {self.resolution} is not a multiple of {factor} (VAE factor x patch size) "
                f"for {self.pretrained_model}"
            )
        self.vae = pipe.vae.requires_grad_(False).eval() if pipe.vae is not None else None
        self.text_encoders = nn.ModuleList(
            [
                e.requires_grad_(False).eval()
                for e in (pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3)
                if e is not None
            ]
        )
        self.roles = RoleTransformers(
            transformer, roles, self.roles_as, **self.lora, gradient_checkpointing=self.gradient_checkpointing
        )
        if self.generator_lora is not None:
            self.roles.load_lora_(GENERATOR, self.generator_lora, self.generator_checkpoint_scale)
            if GENERATOR_EMA in self.roles.roles:
                self.roles.copy_role_(GENERATOR_EMA, GENERATOR)
        if self.fake_lora is not None and FAKE in self.roles.roles:  # inference builds no fake score
            self.roles.load_lora_(FAKE, self.fake_lora)

    lora_key_prefix = "transformer_blocks."
    """Every LoRA key of this family's transformer starts so (a LoRA of another model family does not)."""

    def _read_lora(self, path, role: str, key: str, rank: int, alpha: float) -> LoraFile | None:
        if not path:
            return None
        lora = read_lora_file(path, role, key)
        foreign = [k for k in (lora.tensors or {}) if not k.startswith(self.lora_key_prefix)]
        if foreign:
            raise LoraCheckpointError(
                f"{lora.where}: first unmatched key: {foreign[0]!r}, not a key of an SD3 transformer's LoRA "
                f"(they start with {self.lora_key_prefix!r}): a LoRA of another model family?"
            )
        lora.check(rank, alpha)
        return lora

    def train(self, mode: bool = True) -> SD3Backbone:
        """Set training mode; the frozen VAE and text encoders stay in eval mode.

        Lightning puts the whole module in training mode when fitting starts. A T5 in training mode
        applies its dropout (``dropout_rate`` 0.1 in its config): every prompt embedding of a training
        step would be a random draw, and the cached null condition of guidance one such draw for good.
        """
        super().train(mode)
        for frozen in [*getattr(self, "text_encoders", ()), getattr(self, "vae", None)]:
            if frozen is not None:
                frozen.eval()
        return self

    # -- the interface --------------------------------------------------------------------------

    pixel_space = False
    """Whether latents are pixels (no VAE)."""

    def _components(self) -> dict:
        """Pipeline components to override when loading (none for SD3)."""
        return {}

    @property
    def latent_factor(self) -> int:
        """Pixels per latent side (the VAE's downsampling)."""
        return self._pipe.vae_scale_factor

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        side = self.resolution // self.latent_factor
        return (self.roles.base.config.in_channels, side, side)

    shards_blocks = True

    def denoiser_blocks(self, denoiser: nn.Module) -> Sequence[nn.Module]:
        return list(denoiser.transformer_blocks)  # JointTransformerBlock

    def transformer_forward(self, module: nn.Module, x: Tensor, t: Tensor, cond: Condition) -> Tensor:
        dtype = self.dtype if not torch.is_autocast_enabled(x.device.type) else x.dtype
        return module(
            hidden_states=x.to(dtype),
            timestep=t.float(),  # SD3's sinusoidal embedding computes in float32, then casts
            encoder_hidden_states=cond.tensors["embeds"].to(dtype),
            pooled_projections=cond.tensors["pooled"].to(dtype),
            return_dict=False,
        )[0]

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Condition:
        embeds, _, pooled, _ = self._pipe.encode_prompt(
            prompt=list(prompts),
            prompt_2=None,
            prompt_3=None,
            device=self.device,
            do_classifier_free_guidance=False,
            max_sequence_length=self.max_sequence_length,
        )
        return Condition({"embeds": embeds.float(), "pooled": pooled.float()})

    def null_condition(self, n: int) -> Condition:
        if self._null is None or self._null.tensors["embeds"].device != self.device:
            self._null = self.encode_prompts([""])
        return self._null.repeat(n)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        config = self.vae.config
        shift = config.shift_factor or 0.0
        z = latents / config.scaling_factor + shift
        images = self.vae.decode(z.to(self.vae.dtype), return_dict=False)[0]
        return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)

    @torch.no_grad()
    def encode_images(self, images: Tensor) -> Tensor:
        """``uint8`` images to latents (the inverse of :meth:`decode`, for tests and data)."""
        config = self.vae.config
        x = images.to(self.vae.dtype) / 127.5 - 1
        z = self.vae.encode(x).latent_dist.mode()
        return ((z - (config.shift_factor or 0.0)) * config.scaling_factor).float()


class PixelSD3Backbone(SD3Backbone):
    """The SD3 architecture denoising RGB pixels directly (no VAE): for small synthetic worlds.

    Latents are images scaled to ``[-1, 1]``; the pipeline folder has no VAE (``vae: null`` in its
    ``model_index.json``, as ``build_tiny_sd3(..., pixel_space=True)`` writes). Arguments as
    :class:`SD3Backbone`.
    """

    pixel_space = True

    def _components(self) -> dict:
        return {"vae": None}

    @property
    def latent_factor(self) -> int:
        return 1

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        return ((latents.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)

    @torch.no_grad()
    def encode_images(self, images: Tensor) -> Tensor:
        return images.float() / 127.5 - 1
