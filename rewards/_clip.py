"""Frozen CLIP encoders shared by the CLIP-based rewards: loading, a small cache, and tensor preprocessing.

Two kinds of CLIP are loaded here, both behind the same two methods:

* :func:`load_open_clip` -- an ``open_clip`` model from a built-in name and pretrained tag
  (``"ViT-L-14"``, ``"openai"``), a built-in name and a local checkpoint file, a ``local-dir:`` /
  ``hf-hub:`` model name, or an architecture given as a config dict (``{"embed_dim": ..., "vision_cfg":
  {...}, "text_cfg": {...}}``, the format of open_clip's ``model_configs/*.json``; random weights unless
  ``pretrained`` names a checkpoint file) -- the tests use tiny dict configs.
* :func:`load_hf_clip` -- a transformers ``CLIPModel`` and its processor (``from_pretrained`` with a hub
  id or a local folder), used by PickScore.

Both return a :class:`ClipEncoder`: ``encode_images(uint8 (N, 3, H, W)) -> (N, D)`` and
``encode_text(prompts) -> (N, D)``, L2-normalised float32 features computed without gradients.
Images are preprocessed on tensors, in batches, on the encoder's device, following the model's own
preprocessing settings (resize mode, size, interpolation, centre crop, mean / std); the resize uses
``torch.nn.functional.interpolate`` with antialiasing rather than PIL, so features differ from the
PIL pipeline by resampling noise only.

Identical requests share one model: encoders are cached by ``(kind, model, pretrained / processor,
device, precision)`` in a weak-value cache, so a model lives as long as a reward holds it and two
rewards naming the same CLIP (e.g. CLIP score and the aesthetic predictor, both ViT-L/14 by OpenAI)
load it once. Loading is serialised by a lock (rewards may be built from several threads).
"""

from __future__ import annotations

import json
import os
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

Precision = Literal["fp32", "fp16", "bf16"]
ModelSpec = str | dict[str, Any]
"""An open_clip model: a name (``"ViT-L-14"``, ``"local-dir:/path"``, ``"hf-hub:org/repo"``) or a config dict."""


# ----------------------------------------------------------------------------------------- preprocessing
def preprocess_images(
    images: Tensor | Sequence[Tensor],
    size: tuple[int, int],
    mean: Sequence[float] = OPENAI_MEAN,
    std: Sequence[float] = OPENAI_STD,
    interpolation: str = "bicubic",
    resize_mode: str = "shortest",
    fill: float = 0.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    resize_short: int | None = None,
) -> Tensor:
    """CLIP-preprocess ``uint8`` images on tensors: resize, crop (or pad), scale to [0, 1], normalise.

    Args:
        images: ``uint8`` ``(N, 3, H, W)``, or a sequence of ``(3, H, W)`` images of any sizes.
        size: output ``(height, width)``.
        mean: per-channel mean subtracted after scaling to [0, 1].
        std: per-channel std divided by.
        interpolation: ``bicubic`` or ``bilinear`` (antialiased when downsampling).
        resize_mode: ``shortest`` (shorter side to size, then centre crop: CLIP's default),
            ``squash`` (resize to size, ignoring the aspect ratio) or ``longest`` (longer side to size,
            then pad with ``fill``, given in [0, 1] units before normalisation).
        device: where to compute (default: the images' device).
        dtype: dtype of the result.
        resize_short: with ``shortest``, resize the short side to this before the centre crop
            (default: the crop's size, when square).

    Returns:
        ``(N, 3, height, width)`` normalised pixels.
    """
    if resize_mode not in ("shortest", "squash", "longest"):
        raise ValueError(f"resize_mode must be shortest, squash or longest, got {resize_mode!r}")
    if interpolation not in ("bicubic", "bilinear"):
        interpolation = "bicubic"
    if isinstance(images, Tensor):
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images (N, 3, H, W), got {tuple(images.shape)}")
        groups = [(list(range(images.shape[0])), images)]
    else:
        by_shape: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(images):
            if img.dim() != 3 or img.shape[0] != 3:
                raise ValueError(f"expected image (3, H, W), got {tuple(img.shape)} at index {i}")
            by_shape.setdefault(tuple(img.shape[1:]), []).append(i)
        groups = [(idx, torch.stack([images[i] for i in idx])) for idx in by_shape.values()]
    n = sum(len(idx) for idx, _ in groups)
    device = torch.device(device) if device is not None else (groups[0][1].device if groups else torch.device("cpu"))
    th, tw = size
    out = torch.empty(n, 3, th, tw, device=device, dtype=torch.float32)
    for idx, batch in groups:
        x = batch.to(device)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        x = _resize_crop(x, th, tw, interpolation, resize_mode, fill, resize_short)
        out[torch.as_tensor(idx, device=device)] = x
    m = torch.as_tensor(mean, device=device, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.as_tensor(std, device=device, dtype=torch.float32).view(1, 3, 1, 1)
    return ((out - m) / s).to(dtype)


def _resize(x: Tensor, h: int, w: int, interpolation: str) -> Tensor:
    if (h, w) == tuple(x.shape[-2:]):
        return x
    # antialias as PIL does when downsampling; clamp like PIL's uint8 output (bicubic overshoots)
    return F.interpolate(x, size=(h, w), mode=interpolation, align_corners=False, antialias=True).clamp_(0.0, 1.0)


def _resize_crop(
    x: Tensor, th: int, tw: int, interpolation: str, resize_mode: str, fill: float, resize_short: int | None = None
) -> Tensor:
    H, W = x.shape[-2:]
    if resize_mode == "squash":
        return _resize(x, th, tw, interpolation)
    if resize_mode == "shortest":
        if resize_short is not None or th == tw:
            # torchvision's Resize(int) / transformers' shortest_edge: the short side exactly, the long
            # side truncated
            s = resize_short if resize_short is not None else th
            h, w = (s, int(s * W / H)) if H <= W else (int(s * H / W), s)
        else:
            scale = max(th / H, tw / W)
            h, w = round(H * scale), round(W * scale)
        h, w = max(h, th), max(w, tw)
        x = _resize(x, h, w, interpolation)
        top, left = int(round((h - th) / 2.0)), int(round((w - tw) / 2.0))
        return x[..., top : top + th, left : left + tw]
    # longest: fit inside, then pad to size
    scale = min(th / H, tw / W)
    h, w = max(1, min(th, round(H * scale))), max(1, min(tw, round(W * scale)))
    x = _resize(x, h, w, interpolation)
    canvas = torch.full((x.shape[0], 3, th, tw), float(fill), device=x.device, dtype=x.dtype)
    top, left = (th - h) // 2, (tw - w) // 2
    canvas[..., top : top + h, left : left + w] = x
    return canvas


# ----------------------------------------------------------------------------------------- encoders
class ClipEncoder:
    """A frozen CLIP with its tokenizer and image preprocessing; features are L2-normalised float32.

    Attributes:
        model: the underlying ``nn.Module`` (eval mode, no gradients).
        device: where the model lives.
        embed_dim: size of the joint image-text embedding.
        logit_scale: the model's learnt temperature ``exp(logit_scale)`` (100 for OpenAI's CLIP).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenize: Callable[[list[str]], dict[str, Tensor]],
        image_fn: Callable[..., Tensor],
        text_fn: Callable[..., Tensor],
        size: tuple[int, int],
        mean: Sequence[float],
        std: Sequence[float],
        interpolation: str,
        resize_mode: str,
        embed_dim: int,
        logit_scale: float,
        device: torch.device,
        dtype: torch.dtype,
        fill: float = 0.0,
        resize_short: int | None = None,
    ) -> None:
        self.model = model
        self._tokenize = tokenize
        self._image_fn = image_fn
        self._text_fn = text_fn
        self.size = size
        self.mean, self.std = tuple(mean), tuple(std)
        self.interpolation, self.resize_mode, self.fill = interpolation, resize_mode, fill
        self.resize_short = resize_short
        self.embed_dim = embed_dim
        self.logit_scale = logit_scale
        self.device = device
        self.dtype = dtype

    def preprocess(self, images: Tensor | Sequence[Tensor]) -> Tensor:
        """``uint8`` images to the model's normalised input, on :attr:`device`."""
        return preprocess_images(
            images,
            self.size,
            self.mean,
            self.std,
            self.interpolation,
            self.resize_mode,
            self.fill,
            self.device,
            self.dtype,
            self.resize_short,
        )

    @torch.no_grad()
    def encode_images(self, images: Tensor | Sequence[Tensor], batch_size: int = 32) -> Tensor:
        """``uint8`` images ``(N, 3, H, W)`` (or a list of ``(3, H, W)``) to ``(N, D)`` unit-norm features."""
        n = images.shape[0] if isinstance(images, Tensor) else len(images)
        if n == 0:
            return torch.zeros(0, self.embed_dim, device=self.device)
        out = []
        for start in range(0, n, batch_size):
            pixels = self.preprocess(images[start : start + batch_size])
            out.append(F.normalize(_as_tensor(self._image_fn(pixels)).float(), dim=-1))
        return torch.cat(out)

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str], batch_size: int = 32) -> Tensor:
        """Prompts to ``(N, D)`` unit-norm features; each distinct prompt is encoded once (a group's
        prompt repeats), and prompts longer than the context are truncated."""
        prompts = list(prompts)
        unique = list(dict.fromkeys(prompts))
        if not unique:
            return torch.zeros(0, self.embed_dim, device=self.device)
        out = []
        for start in range(0, len(unique), batch_size):
            tokens = {k: v.to(self.device) for k, v in self._tokenize(unique[start : start + batch_size]).items()}
            out.append(F.normalize(_as_tensor(self._text_fn(**tokens)).float(), dim=-1))
        features = torch.cat(out)
        if len(unique) == len(prompts):
            return features
        index = {p: i for i, p in enumerate(unique)}
        return features[torch.tensor([index[p] for p in prompts], device=features.device)]


def _as_tensor(out: Any) -> Tensor:
    """Features from a tensor or a transformers output object (transformers 5 returns the latter)."""
    if isinstance(out, Tensor):
        return out
    for name in ("image_embeds", "text_embeds", "pooler_output"):
        value = getattr(out, name, None)
        if isinstance(value, Tensor):
            return value
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    raise TypeError(f"cannot read features from {type(out).__name__}")


# ----------------------------------------------------------------------------------------- cache
_CACHE: weakref.WeakValueDictionary[tuple, ClipEncoder] = weakref.WeakValueDictionary()
_LOCK = threading.RLock()
_LOADS = {"count": 0}


def load_count() -> int:
    """How many CLIP models this process has really loaded (not taken from the cache)."""
    return _LOADS["count"]


def resolve_device(device: torch.device | str) -> torch.device:
    """``device`` with an explicit index for ``cuda`` (so ``cuda`` and ``cuda:0`` share cached models)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _cached(key: tuple, loader: Callable[[], ClipEncoder]) -> ClipEncoder:
    with _LOCK:
        encoder = _CACHE.get(key)
        if encoder is None:
            encoder = loader()
            _LOADS["count"] += 1
            _CACHE[key] = encoder
        return encoder


def clear_cache() -> None:
    """Forget cached encoders (those still held by a reward stay alive until it drops them)."""
    with _LOCK:
        _CACHE.clear()


def model_key(model: ModelSpec) -> str:
    """A stable string for a model spec (a dict config is serialised with sorted keys)."""
    return model if isinstance(model, str) else json.dumps(model, sort_keys=True)


def _precision(precision: str, device: torch.device) -> tuple[str, torch.dtype]:
    if precision not in _PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(_PRECISIONS)}, got {precision!r}")
    if device.type == "cpu" and precision == "fp16":
        precision = "fp32"  # fp16 matmuls are slow or missing on CPU
    return precision, _PRECISIONS[precision]


def _freeze(model: torch.nn.Module) -> torch.nn.Module:
    model.eval()
    model.requires_grad_(False)
    return model


# ----------------------------------------------------------------------------------------- open_clip
def needs_quick_gelu(model: str, pretrained: str | None) -> bool:
    """Whether open_clip weights were trained with QuickGELU.

    open_clip >= 3 builds "ViT-L-14" with GELU even for the QuickGELU-trained OpenAI weights (it only
    warns): follow the tag's own setting so the features are the real ones.
    """
    import open_clip

    if not pretrained or os.path.isfile(pretrained):
        return False
    tag_cfg = open_clip.get_pretrained_cfg(model.replace("/", "-"), pretrained) or {}
    return bool(tag_cfg.get("quick_gelu", False))


def load_open_clip(
    model: ModelSpec = "ViT-L-14",
    pretrained: str | None = "openai",
    device: torch.device | str = "cpu",
    precision: Precision = "fp32",
) -> ClipEncoder:
    """A frozen open_clip encoder, shared with every other request for the same model, weights and device.

    Args:
        model: a built-in open_clip name (``"ViT-L-14"``), a ``"local-dir:/folder"`` (holding
            ``open_clip_config.json`` and weights) or ``"hf-hub:org/repo"`` name, or an architecture dict
            in open_clip's config format (``embed_dim``, ``vision_cfg``, ``text_cfg``; optional
            ``preprocess_cfg``).
        pretrained: a pretrained tag of a built-in name (``"openai"``), or a local checkpoint file
            (``.safetensors``, ``.bin``, ``.pt``; read with ``weights_only=True``). ``None``: random weights
            (only sensible for tests). Ignored with ``local-dir:`` / ``hf-hub:`` names.
        device: where to run the model.
        precision: ``fp32``, ``fp16`` or ``bf16`` weights (fp16 falls back to fp32 on CPU).
    """
    device = resolve_device(device)
    precision, dtype = _precision(precision, device)
    if isinstance(model, str) and model.startswith(("local-dir:", "hf-hub:")):
        pretrained = None  # the folder / repository holds the weights
    if pretrained and os.path.isfile(pretrained):
        pretrained = os.path.abspath(pretrained)
    key = ("open_clip", model_key(model), pretrained, str(device), precision)
    return _cached(key, lambda: _load_open_clip(model, pretrained, device, precision, dtype))


def _load_open_clip(
    model: ModelSpec, pretrained: str | None, device: torch.device, precision: str, dtype: torch.dtype
) -> ClipEncoder:
    try:
        import open_clip
    except ImportError as err:  # pragma: no cover - the rewards extra is missing
        raise ImportError("the CLIP rewards need open_clip: pip install 'tdmr1-lightning[rewards]'") from err

    if isinstance(model, dict):
        net, tokenizer = _open_clip_from_config(open_clip, model, pretrained, precision)
        net = net.to(device)
        if precision != "fp32":
            open_clip.model.convert_weights_to_lp(net, dtype=dtype)
    else:
        net = open_clip.create_model(
            model,
            pretrained=pretrained,
            device=device,
            precision=precision,
            force_quick_gelu=needs_quick_gelu(model, pretrained),
        )
        tokenizer = open_clip.get_tokenizer(model)
    pp = dict(getattr(net.visual, "preprocess_cfg", {}) or {})
    size = pp.get("size", getattr(net.visual, "image_size", 224))
    size = (size, size) if isinstance(size, int) else tuple(size)
    _freeze(net)
    embed_dim = getattr(net.visual, "output_dim", None)
    if not isinstance(embed_dim, int):
        with torch.no_grad():
            probe = torch.zeros(1, 3, *size, device=device, dtype=dtype)
            embed_dim = int(net.encode_image(probe).shape[-1])
    return ClipEncoder(
        model=net,
        tokenize=lambda prompts: {"text": tokenizer(prompts)},
        image_fn=net.encode_image,
        text_fn=net.encode_text,
        size=size,
        mean=pp.get("mean", OPENAI_MEAN),
        std=pp.get("std", OPENAI_STD),
        interpolation=pp.get("interpolation", "bicubic"),
        resize_mode=pp.get("resize_mode", "shortest"),
        fill=float(pp.get("fill_color", 0)) / 255.0,
        embed_dim=embed_dim,
        logit_scale=float(net.logit_scale.detach().float().exp()),
        device=device,
        dtype=dtype,
    )


def _open_clip_from_config(
    open_clip: Any, config: dict[str, Any], pretrained: str | None, precision: str
) -> tuple[torch.nn.Module, Any]:
    cfg = json.loads(json.dumps(config))  # a deep copy
    cfg = cfg.get("model_cfg", cfg)
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in cfg]
    if missing:
        raise ValueError(f"open_clip config dict lacks {missing} (expected open_clip's model_configs format)")
    cast_dtype = open_clip.model.get_cast_dtype(precision)
    preprocess = cfg.pop("preprocess_cfg", {}) or config.get("preprocess_cfg", {}) or {}
    custom_text = cfg.pop("custom_text", False) or "hf_model_name" in cfg["text_cfg"]
    if "hf_model_name" in cfg["text_cfg"]:  # a transformers text tower: its own weights only without a checkpoint
        cfg["text_cfg"].setdefault("hf_model_pretrained", not pretrained)
    if custom_text and "multimodal_cfg" in cfg:
        raise ValueError("CoCa configs are not supported by the CLIP rewards")
    # random weights are drawn from a fixed seed: the same config gives the same model in every process
    # (so a feature cache stays valid and tests are reproducible), whatever the global RNG state
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = (open_clip.CustomTextCLIP if custom_text else open_clip.CLIP)(**cfg, cast_dtype=cast_dtype)
    if pretrained:
        if not os.path.isfile(pretrained):
            raise FileNotFoundError(
                f"with an open_clip config dict, `pretrained` must be a checkpoint file; {pretrained!r} is not a file"
            )
        open_clip.load_checkpoint(net, pretrained, strict=True, weights_only=True)
    pp = {
        "size": net.visual.image_size,
        "mean": OPENAI_MEAN,
        "std": OPENAI_STD,
        "interpolation": "bicubic",
        "resize_mode": "shortest",
        "fill_color": 0,
        "mode": "RGB",
    }
    pp.update(preprocess)
    open_clip.set_model_preprocess_cfg(net, pp)
    text_cfg = cfg["text_cfg"]
    context = int(text_cfg.get("context_length", 77))
    if text_cfg.get("hf_tokenizer_name"):
        tokenizer = open_clip.tokenizer.HFTokenizer(text_cfg["hf_tokenizer_name"], context_length=context)
    else:
        tokenizer = open_clip.SimpleTokenizer(context_length=context)
    return net, tokenizer


# ----------------------------------------------------------------------------------------- transformers
def load_hf_clip(
    model: str,
    processor: str | None = None,
    device: torch.device | str = "cpu",
    precision: Precision = "fp32",
) -> ClipEncoder:
    """A frozen transformers ``CLIPModel`` with the preprocessing of its processor, shared like open_clip ones.

    Args:
        model: hub id or local folder of the ``CLIPModel`` (``from_pretrained``).
        processor: hub id or local folder of the processor (tokenizer + image processor); default: ``model``.
        device: where to run the model.
        precision: ``fp32``, ``fp16`` or ``bf16`` weights (fp16 falls back to fp32 on CPU).
    """
    device = resolve_device(device)
    precision, dtype = _precision(precision, device)
    processor = processor or model
    key = (
        "transformers",
        os.path.abspath(model) if os.path.isdir(model) else model,
        os.path.abspath(processor) if os.path.isdir(processor) else processor,
        str(device),
        precision,
    )
    return _cached(key, lambda: _load_hf_clip(model, processor, device, dtype))


def _field(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


def hf_image_settings(image_processor: Any) -> dict[str, Any]:
    """The resize / crop / normalisation of a transformers CLIP image processor, for :func:`preprocess_images`."""
    size = _field(image_processor, "size")
    crop = _field(image_processor, "crop_size")
    do_crop = bool(_field(image_processor, "do_center_crop")) and crop is not None
    shortest = _field(size, "shortest_edge")
    resize_short = None
    if do_crop and shortest is not None:
        out_size = (int(_field(crop, "height")), int(_field(crop, "width")))
        mode, resize_short = "shortest", int(shortest)
    elif shortest is not None:
        raise ValueError(
            "unsupported image processor: a shortest_edge resize without a centre crop gives images of varying sizes"
        )
    elif _field(size, "height") is not None:
        out_size = (int(_field(size, "height")), int(_field(size, "width")))
        mode = "squash"
        if do_crop:
            raise ValueError("unsupported image processor: a fixed-size resize followed by a centre crop")
    else:
        raise ValueError(f"unsupported image processor size {size!r}")
    resample = _field(image_processor, "resample")
    interpolation = "bilinear" if resample is not None and int(resample) == 2 else "bicubic"
    return {
        "size": out_size,
        "mean": tuple(_field(image_processor, "image_mean") or OPENAI_MEAN),
        "std": tuple(_field(image_processor, "image_std") or OPENAI_STD),
        "interpolation": interpolation,
        "resize_mode": mode,
        "resize_short": resize_short,
    }


def _load_hf_clip(model: str, processor: str, device: torch.device, dtype: torch.dtype) -> ClipEncoder:
    from transformers import AutoProcessor, CLIPModel

    net = CLIPModel.from_pretrained(model, dtype=dtype).to(device)
    _freeze(net)
    proc = AutoProcessor.from_pretrained(processor)
    tokenizer = getattr(proc, "tokenizer", proc)
    image_processor = getattr(proc, "image_processor", None)
    if image_processor is None:
        raise ValueError(f"processor {processor!r} has no image processor")
    settings = hf_image_settings(image_processor)
    max_length = int(getattr(net.config.text_config, "max_position_embeddings", 77))

    def tokenize(prompts: list[str]) -> dict[str, Tensor]:
        enc = tokenizer(prompts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    return ClipEncoder(
        model=net,
        tokenize=tokenize,
        image_fn=lambda pixel_values: net.get_image_features(pixel_values=pixel_values),
        text_fn=net.get_text_features,
        embed_dim=int(net.config.projection_dim),
        logit_scale=float(net.logit_scale.detach().float().exp()),
        device=device,
        dtype=dtype,
        **settings,
    )


__all__ = [
    "ClipEncoder",
    "ModelSpec",
    "Precision",
    "clear_cache",
    "hf_image_settings",
    "load_hf_clip",
    "load_open_clip",
    "model_key",
    "preprocess_images",
    "resolve_device",
]
