"""A toy-size SD3 built offline with random weights: the CPU default for demos, CI and tests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from ..paths import ConfigPath
from ..tiny import CLIP_MAX_LENGTH, ensure_tiny_sd3
from .base import DEFAULT_LORA_TARGETS, RolesAs
from .sd3 import PixelSD3Backbone, SD3Backbone


class TinySD3Backbone(SD3Backbone):
    """:class:`SD3Backbone` over a tiny random-weight SD3 pipeline that is built into ``directory`` on first use.

    The pipeline is saved with ``save_pretrained`` and loaded with ``from_pretrained`` like any
    other, so the real loading path runs; only the weights are random.

    Args:
        directory: Folder of the tiny pipeline (built there when it holds none); a cache, relative to
            the working directory.
        resolution: Image side in pixels.
        seed: Seed of the random weights (used only when the folder is built).
        roles_as: ``lora`` (adapters on one transformer) or ``full`` (a copy per role).
        lora_rank: LoRA rank of every role adapter.
        lora_alpha: LoRA alpha.
        lora_target_modules: Layers that get adapters, matched as peft matches them (a name, or its end
            after a dot); default: the reference's joint-attention projections `attn.*` (not SD3.5's `attn2`).
        generator_checkpoint: Optional LoRA file to start the generator from (as :class:`SD3Backbone`).
        generator_checkpoint_scale: Scale of the loaded LoRA's update.
        fake_checkpoint: Optional LoRA state dict to start the fake score from.
        dtype: Storage dtype of the frozen weights.
        max_sequence_length: T5 tokens per prompt.
        gradient_checkpointing: Recompute the transformer's activations in the backward pass (as :class:`SD3Backbone`).
        num_layers: Transformer blocks (used only when the folder is built).
        attention_head_dim: Attention head size (idem).
        num_attention_heads: Attention heads (idem).
        patch_size: Transformer patch size (idem).
        words: Whole words the tiny tokenizers keep as one token each (idem): a small world's
            vocabulary makes prompts a few tokens long, and the model much cheaper.
        clip_max_length: CLIP tokens per prompt (idem; 77 as in SD3).
        t5_position_bias_std: Std of the random T5's relative-position bias (idem; ``None``: the
            transformers default, which leaves the frozen T5 nearly a bag of words).
    """

    def __init__(
        self,
        directory: str = ".cache/tdmr1/tiny-sd3",
        resolution: int = 32,
        seed: int = 0,
        roles_as: RolesAs = "lora",
        lora_rank: int = 4,
        lora_alpha: float = 8.0,
        lora_target_modules: Sequence[str] = DEFAULT_LORA_TARGETS,
        generator_checkpoint: ConfigPath | None = None,
        generator_checkpoint_scale: float = 1.0,
        fake_checkpoint: ConfigPath | None = None,
        dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        max_sequence_length: int = 64,
        gradient_checkpointing: bool = False,
        num_layers: int = 2,
        attention_head_dim: int = 16,
        num_attention_heads: int = 2,
        patch_size: int = 2,
        words: Sequence[str] = (),
        clip_max_length: int = CLIP_MAX_LENGTH,
        t5_position_bias_std: float | None = None,
    ) -> None:
        path = ensure_tiny_sd3(
            directory,
            resolution=resolution,
            seed=seed,
            num_layers=num_layers,
            attention_head_dim=attention_head_dim,
            num_attention_heads=num_attention_heads,
            patch_size=patch_size,
            pixel_space=self.pixel_space,
            words=words,
            clip_max_length=clip_max_length,
            t5_position_bias_std=t5_position_bias_std,
        )
        super().__init__(
            str(path),
            resolution=resolution,
            roles_as=roles_as,
            lora_rank=lora_rank,
            lora_alpha=lora_alpha,
            lora_target_modules=lora_target_modules,
            generator_checkpoint=generator_checkpoint,
            generator_checkpoint_scale=generator_checkpoint_scale,
            fake_checkpoint=fake_checkpoint,
            dtype=dtype,
            max_sequence_length=max_sequence_length,
            gradient_checkpointing=gradient_checkpointing,
        )


class TinyPixelSD3Backbone(PixelSD3Backbone, TinySD3Backbone):
    """:class:`TinySD3Backbone` in pixel space (no VAE): the denoiser of the embedded shapes world.

    Arguments as :class:`TinySD3Backbone`; a folder built here has ``vae: null``.
    """
