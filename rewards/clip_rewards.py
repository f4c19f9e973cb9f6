"""CLIP-based rewards of the field: CLIP score, PickScore and the LAION aesthetic predictor.

The definitions follow the public reward code of Flow-GRPO / DiffusionNFT so that numbers compare
(``docs/rewards.md``):

* :class:`CLIPScore` -- ``100 * cos(image, prompt) / 100`` of CLIP ViT-L/14 (OpenAI weights): the
  cosine itself, in [-1, 1] (Flow-GRPO's "CLIP score (ViT-L/14 logits / 100)").
* :class:`PickScore` -- ``exp(logit_scale) * cos(image, prompt) / 26`` of PickScore_v1, a CLIP-H
  fine-tuned on Pick-a-Pic; the raw PickScore (``~21-23``, the number papers report) is in
  ``details["pickscore"]``.
* :class:`AestheticScore` -- LAION's "improved aesthetic predictor" (an MLP on L2-normalised CLIP
  ViT-L/14 image embeddings), about 1..10.

Every model is loaded lazily (on the first call, on the reward's device) through
:mod:`tdmr1_rewards._clip`, which shares one copy of identical CLIP models between rewards. Images are
preprocessed on tensors, batched, on the device (resize with antialiasing instead of PIL: scores differ
from the PIL pipeline by resampling noise only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tdmr1_lightning.reward import Reward, RewardOutput

from ._clip import ClipEncoder, ModelSpec, Precision, load_hf_clip, load_open_clip, resolve_device


class _ClipBacked(Reward):
    """Holds a shared CLIP encoder, fetched again from the cache when the reward changes device."""

    _encoder: ClipEncoder | None = None

    def _fetch(self) -> ClipEncoder:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def encoder(self) -> ClipEncoder:
        """The CLIP encoder, loaded (or taken from the shared cache) on first use."""
        enc = self._encoder
        if enc is None or enc.device != resolve_device(self.device):
            enc = self._encoder = self._fetch()
        return enc

    @property
    def encoder_loaded(self) -> bool:
        """Whether this reward holds its encoder now (not before the first use, nor in a fresh copy)."""
        return self._encoder is not None

    def __getstate__(self) -> dict[str, Any]:
        # the encoder (shared, not picklable) is fetched again after unpickling / deep-copying
        state = dict(vars(self))
        state["_encoder"] = None
        return state

    def load(self) -> None:
        _ = self.encoder  # fetch it now, before the first batch

    def _cosine(self, images: Tensor, prompts: list[str]) -> tuple[ClipEncoder, Tensor]:
        """The encoder and ``cos(image, prompt)`` of each sample."""
        enc = self.encoder
        image_features = enc.encode_images(images, self.batch_size)
        text_features = enc.encode_text(prompts, self.batch_size)
        return enc, (image_features * text_features).sum(-1)


class CLIPScore(_ClipBacked):
    """CLIP score: cosine of image and prompt embeddings of CLIP ViT-L/14 (Flow-GRPO's logits / 100), in [-1, 1].

    The score is ``100 * cos(image, prompt) / 100`` -- the logit at OpenAI CLIP's temperature (100)
    divided by 100, i.e. the cosine itself, whatever the model's own learnt temperature. Typical values
    for matching image-prompt pairs are 0.25-0.35. (The "CLIPScore" metric of Hessel et al. is
    ``2.5 * max(cos, 0)``; multiply if you need that one.)

    Args:
        model: open_clip model name (``ViT-L-14``), ``local-dir:/folder``, ``hf-hub:org/repo``, or an
            architecture dict in open_clip's config format.
        pretrained: open_clip pretrained tag (``openai``) or a local checkpoint file; ``None`` for random
            weights (tests only).
        precision: ``fp32``, ``fp16`` or ``bf16`` weights.
        batch_size: images per forward pass.
    """

    def __init__(
        self,
        model: ModelSpec = "ViT-L-14",
        pretrained: str | None = "openai",
        precision: Precision = "fp32",
        batch_size: int = 32,
    ) -> None:
        self.model = model
        self.pretrained = pretrained
        self.precision = precision
        self.batch_size = _positive(batch_size, "batch_size")

    def _fetch(self) -> ClipEncoder:
        return load_open_clip(self.model, self.pretrained, self.device, self.precision)

    def score(self, images: Tensor, prompts: list[str], metadata: list[dict]) -> RewardOutput:
        _, cosine = self._cosine(images, prompts)
        return RewardOutput(scores=(100.0 * cosine / 100.0).cpu())


class PickScore(_ClipBacked):
    """PickScore: a CLIP-H fine-tuned on human preferences (Pick-a-Pic); reward = PickScore / 26 as in Flow-GRPO.

    PickScore is ``exp(logit_scale) * cos(image, prompt)`` of the fine-tuned model (its temperature is
    100, so raw values are about 17-24; papers report this raw number, e.g. 21.72 for SD3.5-M). The
    reward divides it by ``divisor`` (26, as the field does) so it lies near [0.65, 0.92]; the raw
    values are logged in ``details["pickscore"]``.

    Args:
        model: ``CLIPModel`` hub id or local folder (``from_pretrained``).
        processor: processor (tokenizer + image processor) hub id or local folder; ``None`` uses ``model``.
        divisor: the raw PickScore is divided by this (26 in Flow-GRPO; 1 gives the raw score).
        precision: ``fp32``, ``fp16`` or ``bf16`` weights.
        batch_size: images per forward pass.
    """

    def __init__(
        self,
        model: str = "yuvalkirstain/PickScore_v1",
        processor: str | None = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
        divisor: float = 26.0,
        precision: Precision = "fp32",
        batch_size: int = 32,
    ) -> None:
        if not divisor > 0:
            raise ValueError(f"divisor must be > 0, got {divisor}")
        self.model = model
        self.processor = processor
        self.divisor = float(divisor)
        self.precision = precision
        self.batch_size = _positive(batch_size, "batch_size")

    def _fetch(self) -> ClipEncoder:
        return load_hf_clip(self.model, self.processor, self.device, self.precision)

    def score(self, images: Tensor, prompts: list[str], metadata: list[dict]) -> RewardOutput:
        enc, cosine = self._cosine(images, prompts)
        raw = (enc.logit_scale * cosine).cpu()
        return RewardOutput(scores=raw / self.divisor, details={"pickscore": raw.tolist()})


class AestheticHead(nn.Module):
    """The MLP of LAION's improved aesthetic predictor (its state-dict keys: ``layers.{0,2,4,6,7}.*``).

    Args:
        in_dim: CLIP embedding size (768 for ViT-L/14).
    """

    def __init__(self, in_dim: int = 768) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(in_dim, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A state dict from ``.safetensors`` or a torch file (read with ``weights_only=True``).

    A ``{"state_dict": ...}`` wrapper and ``module.`` / ``model.`` key prefixes are removed.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    for prefix in ("module.", "model."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


class AestheticScore(_ClipBacked):
    """LAION aesthetic score (improved aesthetic predictor): an MLP on CLIP ViT-L/14 image embeddings, about 1-10.

    The head (``Linear(768,1024)-Dropout-Linear(1024,128)-Dropout-Linear(128,64)-Dropout-Linear(64,16)-
    Linear(16,1)``) reads the L2-normalised CLIP image embedding; its input size follows the CLIP model.
    The prompt is not used. The head weights are LAION's ``sac+logos+ava1-l14-linearMSE.pth`` (from the
    ``christophschuhmann/improved-aesthetic-predictor`` repository), downloaded beforehand.

    Args:
        head_path: the MLP head's weights, ``.safetensors`` or a torch state dict (``.pth``; read with
            ``weights_only=True``).
        model: open_clip model name (``ViT-L-14``), ``local-dir:/folder``, ``hf-hub:org/repo``, or an
            architecture dict in open_clip's config format.
        pretrained: open_clip pretrained tag (``openai``) or a local checkpoint file; ``None`` for random
            weights (tests only).
        precision: ``fp32``, ``fp16`` or ``bf16`` CLIP weights (the head runs in fp32).
        batch_size: images per forward pass.
    """

    def __init__(
        self,
        head_path: str,
        model: ModelSpec = "ViT-L-14",
        pretrained: str | None = "openai",
        precision: Precision = "fp32",
        batch_size: int = 32,
    ) -> None:
        if not Path(head_path).is_file():
            raise FileNotFoundError(
                f"aesthetic head weights {head_path!r} not found (LAION's sac+logos+ava1-l14-linearMSE.pth, "
                "from the christophschuhmann/improved-aesthetic-predictor repository)"
            )
        self.head_path = str(head_path)
        self.model = model
        self.pretrained = pretrained
        self.precision = precision
        self.batch_size = _positive(batch_size, "batch_size")
        self.head: AestheticHead | None = None

    def _fetch(self) -> ClipEncoder:
        return load_open_clip(self.model, self.pretrained, self.device, self.precision)

    def load(self) -> None:
        enc = self.encoder
        head = AestheticHead(enc.embed_dim)
        state = read_state_dict(self.head_path)
        try:
            head.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise ValueError(
                f"aesthetic head {self.head_path} does not fit an MLP on {enc.embed_dim}-d CLIP features: {err}"
            ) from err
        self.head = head.eval().requires_grad_(False).to(self.device)

    @torch.no_grad()
    def score(self, images: Tensor, prompts: list[str], metadata: list[dict]) -> RewardOutput:
        features = self.encoder.encode_images(images, self.batch_size)  # already L2-normalised
        head = self.head.to(features.device)
        return RewardOutput(scores=head(features.float()).squeeze(-1).cpu())


def _positive(value: int, name: str) -> int:
    if int(value) < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


__all__ = ["AestheticHead", "AestheticScore", "CLIPScore", "PickScore", "read_state_dict"]
