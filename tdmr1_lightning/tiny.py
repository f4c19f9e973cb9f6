"""Tiny, randomly initialised Stable Diffusion 3 pipelines for tests and CPU runs.

The training code in this package loads its generator with
``diffusers.StableDiffusion3Pipeline.from_pretrained(path)``, exactly as it would
load ``stabilityai/stable-diffusion-3.5-*``.  Tests and the CPU smoke config
cannot download multi-gigabyte checkpoints (and must not touch the network), so
this module builds a *structurally faithful* miniature of SD3 offline:

* the real diffusers / transformers classes (``SD3Transformer2DModel``,
  ``AutoencoderKL``, two ``CLIPTextModelWithProjection``, ``T5EncoderModel``,
  ``FlowMatchEulerDiscreteScheduler``) with tiny configs and seeded random
  weights;
* tokenizers built deterministically without training or downloads: a
  character-level CLIP byte-level BPE (256 byte symbols, their ``</w>``
  variants, ``<|startoftext|>``/``<|endoftext|>``, no merges) and a
  character-level T5 unigram vocabulary covering printable ASCII (other
  characters map to ``<unk>``);
* the whole thing assembled into ``StableDiffusion3Pipeline`` and written with
  ``save_pretrained``, so the folder has the same layout as the hub repo
  (``model_index.json``, ``transformer/``, ``vae/``, ``text_encoder{,_2,_3}/``,
  ``tokenizer{,_2,_3}/``, ``scheduler/``).

The dimensions are consistent the way SD3 needs them: the two CLIP hidden states
(``d1 + d2``) are concatenated and zero-padded to the T5 width ``text_dim``
(= ``joint_attention_dim``), the pooled projections give
``pooled_projection_dim = d1 + d2``, and ``pos_embed_max_size`` equals the
latent side divided by the patch size so the model has no unused positions.

Things a caller must know:

* Images are ``resolution x resolution``; pass ``height=width=resolution`` to
  the pipeline (its default size is ``transformer.sample_size * vae_scale_factor``
  which is the same value).
* The T5 tokenizer has ``model_max_length = 256`` (the pipeline's default
  ``max_sequence_length``).  T5 uses relative positions, so any
  ``max_sequence_length <= 512`` (the pipeline's own limit) works; passing a
  small value (e.g. 16) makes the tiny pipeline much faster.  CLIP sequences are
  ``clip_max_length`` tokens (77 by default, as in SD3).
* Both tokenizers are character level (about one token per character), so
  CLIP keeps only the first ~75 characters of a prompt and T5 the first
  ``max_sequence_length - 1``; the pipeline logs a truncation warning beyond.
  ``words`` adds whole-word tokens to both (a small world's vocabulary: a
  prompt becomes one token a word, and 16 tokens are plenty).
* The CLIP encoders have hidden sizes ``text_dim // 4`` and ``text_dim // 2``
  (8 and 16 by default), so ``pooled_prompt_embeds`` has ``3 * text_dim // 4``
  features and the CLIP part of ``prompt_embeds`` is zero-padded, as in SD3.5.
* The VAE uses SD3-like ``scaling_factor = 1.5305`` and ``shift_factor = 0.0609``.

Build from the command line with ``tdmr1 tiny DIR``
(``--if-missing`` to reuse an existing folder).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import string
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .files import install_folder

__all__ = [
    "CLIP_MAX_LENGTH",
    "T5_MAX_LENGTH",
    "VAE_SCALING_FACTOR",
    "VAE_SHIFT_FACTOR",
    "build_tiny_sd3",
    "clip_char_vocab",
    "clip_hidden_sizes",
    "clip_word_merges",
    "ensure_tiny_sd3",
    "main",
    "t5_char_vocab",
]

CLIP_MAX_LENGTH = 77
"""``model_max_length`` of both CLIP tokenizers (and CLIP ``max_position_embeddings``)."""

T5_MAX_LENGTH = 256
"""``model_max_length`` of the T5 tokenizer (the pipeline's default ``max_sequence_length``)."""

VAE_SCALING_FACTOR = 1.5305
VAE_SHIFT_FACTOR = 0.0609

_MODEL_INDEX = "model_index.json"


# --------------------------------------------------------------------------- tokenizers


def _bytes_to_unicode() -> list[str]:
    """The GPT-2/CLIP byte -> printable unicode mapping, in CLIP vocabulary order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def clip_char_vocab() -> dict[str, int]:
    """Character-level CLIP BPE vocabulary (no merges needed).

    Returns:
        Mapping token -> id: the 256 byte-level symbols (ids 0-255), their
        ``</w>`` end-of-word variants (256-511), ``<|startoftext|>`` (512) and
        ``<|endoftext|>`` (513).  Every UTF-8 string is representable, so there
        are never unknown tokens.
    """
    chars = _bytes_to_unicode()
    vocab: dict[str, int] = {}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab


def t5_char_vocab() -> list[tuple[str, float]]:
    """Character-level unigram vocabulary for the T5 tokenizer.

    Returns:
        ``(piece, log-prob score)`` list: ``<pad>`` (0), ``</s>`` (1), ``<unk>``
        (2), ``"▁"``, every printable non-space ASCII character and its
        word-initial ``"▁"``-prefixed variant.  Non-ASCII characters become
        ``<unk>``.
    """
    alphabet = string.ascii_lowercase + string.ascii_uppercase + string.digits + string.punctuation
    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(ch, -3.0) for ch in alphabet]
    pieces += [("▁" + ch, -2.5) for ch in alphabet]
    return pieces


def _chain(word: str) -> list[tuple[str, str]]:
    """The merges that build ``word`` left to right: ``(w[0], w[1]), (w[:2], w[2]), ..., (w[:-1], w[-1] + "</w>")``."""
    return [(word[:k], word[k] + ("</w>" if k == len(word) - 1 else "")) for k in range(1, len(word))]


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's byte-pair encoding of one lower-case ASCII word (best-ranked adjacent pair first)."""
    parts = list(word[:-1]) + [word[-1] + "</w>"]
    while len(parts) > 1:
        pairs = [(ranks.get((a, b), len(ranks)), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    return parts


def clip_word_merges(words: Sequence[str]) -> list[tuple[str, str]]:
    """BPE merges under which each of ``words`` is one CLIP token.

    Each word gets its merge chain (:func:`_chain`). BPE applies the best-ranked pair anywhere in a
    word, so one word's merge can split another ("re" of "red" inside "green"); words that do not come
    out whole move their chains to the front and the ranking is tried again.

    Raises:
        ValueError: A word is not ASCII letters/digits, or no ranking keeps every word whole.
    """
    order = sorted({w.lower() for w in words if w}, key=lambda w: (-len(w), w))
    for word in order:
        if not word.isascii() or not word.isalnum():
            raise ValueError(f"tokenizer words must be ASCII letters or digits, got {word!r}")
    for _ in range(4 * len(order) + 1):
        merges = list(dict.fromkeys(pair for word in order for pair in _chain(word)))
        ranks = {pair: i for i, pair in enumerate(merges)}
        split = [w for w in order if len(w) > 1 and len(_bpe(w, ranks)) > 1]
        if not split:
            return merges
        order = split + [w for w in order if w not in split]
    raise ValueError(f"no merge order keeps these words whole: {split}")


def _build_tokenizers(
    scratch: Path, words: Sequence[str] = (), clip_max_length: int = CLIP_MAX_LENGTH
) -> tuple[Any, Any, Any]:
    """Build the two CLIP tokenizers and the T5 tokenizer (no network, no training).

    Args:
        scratch: Empty directory where ``vocab.json``/``merges.txt`` are written
            for the CLIP tokenizer to load.
        words: Whole words both tokenizers keep as single tokens (a small world's vocabulary makes
            prompts a few tokens long instead of one token a character); other text stays character
            level.
        clip_max_length: ``model_max_length`` of the CLIP tokenizers (the pipeline pads CLIP tokens
            to it).

    Returns:
        ``(tokenizer, tokenizer_2, tokenizer_3)``.
    """
    from transformers import CLIPTokenizer, T5TokenizerFast

    vocab = clip_char_vocab()
    merges = clip_word_merges(words)
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    clip_dir = scratch / "clip_bpe"
    clip_dir.mkdir(parents=True, exist_ok=True)
    (clip_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (clip_dir / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    tokenizer = CLIPTokenizer.from_pretrained(str(clip_dir), model_max_length=clip_max_length, local_files_only=True)
    tokenizer_2 = CLIPTokenizer.from_pretrained(str(clip_dir), model_max_length=clip_max_length, local_files_only=True)
    pieces = t5_char_vocab() + [("\u2581" + w.lower(), -1.0) for w in sorted(set(words))]
    tokenizer_3 = T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=T5_MAX_LENGTH)
    return tokenizer, tokenizer_2, tokenizer_3


# --------------------------------------------------------------------------- models


def clip_hidden_sizes(text_dim: int) -> tuple[int, int]:
    """Hidden sizes ``(d1, d2)`` of the two CLIP text encoders for a given T5 width.

    Args:
        text_dim: T5 ``d_model`` (= transformer ``joint_attention_dim``).

    Returns:
        ``(text_dim // 4, text_dim // 2)``; ``d1 + d2`` is the transformer's
        ``pooled_projection_dim`` and the CLIP features are zero-padded from
        ``d1 + d2`` to ``text_dim`` before joining the T5 tokens.
    """
    return text_dim // 4, text_dim // 2


def _seed(seed: int) -> None:
    """Seed torch's CPU generator (thin wrapper so every component is seeded the same way)."""
    import torch

    torch.manual_seed(seed)


def _clip_text_encoder(hidden_size: int, vocab: dict[str, int], seed: int, max_length: int = CLIP_MAX_LENGTH) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        projection_dim=hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=max_length,
        hidden_act="quick_gelu",
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )
    _seed(seed)
    return CLIPTextModelWithProjection(config).eval()


def _build_components(
    scratch: Path,
    *,
    resolution: int,
    seed: int,
    num_layers: int,
    attention_head_dim: int,
    num_attention_heads: int,
    text_dim: int,
    patch_size: int,
    pixel_space: bool = False,
    words: Sequence[str] = (),
    clip_max_length: int = CLIP_MAX_LENGTH,
    t5_position_bias_std: float | None = None,
    dual_attention_layers: Sequence[int] = (),
) -> dict[str, Any]:
    """Create every pipeline component with seeded random weights (no VAE in pixel space)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import T5Config, T5EncoderModel

    if text_dim < 8 or text_dim % 8:
        raise ValueError(f"text_dim must be a positive multiple of 8, got {text_dim}")
    vae_blocks = (16, 32)
    vae_scale = 1 if pixel_space else 2 ** (len(vae_blocks) - 1)
    if resolution % (vae_scale * patch_size):
        raise ValueError(f"resolution must be a multiple of {vae_scale * patch_size}, got {resolution}")
    latent_side = resolution // vae_scale
    latent_channels = 3 if pixel_space else 4
    # SD3 concatenates the two CLIP hidden states (d1 + d2) and zero-pads them to the
    # T5 width; d1 + d2 must not exceed text_dim or the pad would crop CLIP-2 away.
    # Like SD3.5 (768 + 1280 < 4096) the sizes differ and the padding is non-empty.
    clip_dims = clip_hidden_sizes(text_dim)

    tokenizer, tokenizer_2, tokenizer_3 = _build_tokenizers(scratch, words, clip_max_length)
    clip_vocab = tokenizer.get_vocab()

    _seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=latent_side,
        patch_size=patch_size,
        in_channels=latent_channels,
        out_channels=latent_channels,
        num_layers=num_layers,
        attention_head_dim=attention_head_dim,
        num_attention_heads=num_attention_heads,
        joint_attention_dim=text_dim,
        caption_projection_dim=attention_head_dim * num_attention_heads,
        pooled_projection_dim=sum(clip_dims),
        pos_embed_max_size=latent_side // patch_size,
        qk_norm="rms_norm",
        dual_attention_layers=tuple(dual_attention_layers),
    )

    _seed(seed)
    vae = (
        None
        if pixel_space
        else AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * len(vae_blocks),
            up_block_types=("UpDecoderBlock2D",) * len(vae_blocks),
            block_out_channels=vae_blocks,
            layers_per_block=1,
            latent_channels=latent_channels,
            norm_num_groups=8,
            sample_size=resolution,
            scaling_factor=VAE_SCALING_FACTOR,
            shift_factor=VAE_SHIFT_FACTOR,
            use_quant_conv=False,
            use_post_quant_conv=False,
        )
    )

    text_encoder = _clip_text_encoder(clip_dims[0], clip_vocab, seed, clip_max_length)
    text_encoder_2 = _clip_text_encoder(clip_dims[1], clip_vocab, seed, clip_max_length)

    t5_config = T5Config(
        vocab_size=len(tokenizer_3),
        d_model=text_dim,
        d_kv=max(text_dim // 2, 4),
        d_ff=2 * text_dim,
        num_layers=2,
        num_decoder_layers=0,
        num_heads=2,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu",
        is_encoder_decoder=False,
        use_cache=False,
        pad_token_id=tokenizer_3.pad_token_id,
        eos_token_id=tokenizer_3.eos_token_id,
        decoder_start_token_id=tokenizer_3.pad_token_id,
        tie_word_embeddings=False,
    )
    _seed(seed)
    text_encoder_3 = T5EncoderModel(t5_config).eval()
    if t5_position_bias_std is not None:
        if not t5_position_bias_std > 0:
            raise ValueError(f"t5_position_bias_std must be positive, got {t5_position_bias_std}")
        # transformers' init (std d_model**-0.5) leaves random T5 attention nearly uniform, so each
        # output is its word's embedding plus a bag-of-words average: which colour names which shape
        # is lost. A sharp random bias makes every token attend to fixed neighbours instead.
        import torch

        _seed(seed)
        for block in text_encoder_3.encoder.block:
            attention = block.layer[0].SelfAttention
            if attention.has_relative_attention_bias:
                torch.nn.init.normal_(attention.relative_attention_bias.weight, std=t5_position_bias_std)

    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)

    return {
        "transformer": transformer.eval(),
        "scheduler": scheduler,
        "vae": vae.eval() if vae is not None else None,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "text_encoder_2": text_encoder_2,
        "tokenizer_2": tokenizer_2,
        "text_encoder_3": text_encoder_3,
        "tokenizer_3": tokenizer_3,
    }


# --------------------------------------------------------------------------- build / ensure


def _save_pipeline(pipe: Any, directory: Path) -> None:
    """Write the pipeline to ``directory`` (separate function so tests can interrupt it)."""
    pipe.save_pretrained(str(directory), safe_serialization=True)


def build_tiny_sd3(
    directory: str | Path,
    *,
    resolution: int = 32,
    seed: int = 0,
    num_layers: int = 2,
    attention_head_dim: int = 16,
    num_attention_heads: int = 2,
    text_dim: int = 32,
    patch_size: int = 2,
    pixel_space: bool = False,
    words: Sequence[str] = (),
    clip_max_length: int = CLIP_MAX_LENGTH,
    t5_position_bias_std: float | None = None,
    dual_attention_layers: Sequence[int] = (),
    verbose: bool = False,
) -> Path:
    """Build a tiny random-weight SD3 pipeline and save it with ``save_pretrained``.

    The result loads with ``StableDiffusion3Pipeline.from_pretrained(directory)``.
    The build happens in a hidden sibling temporary directory that is renamed
    into place at the end, so an interrupted build never leaves a partial
    ``directory``.  An existing ``directory`` (empty or not) is replaced.
    The global torch RNG state of the caller is left untouched.

    Args:
        directory: Destination folder.
        resolution: Image side in pixels (multiple of ``2 * patch_size``); the
            latent side is ``resolution // 2``.
        seed: Seed applied (``torch.manual_seed``) before creating each
            component; the same seed gives bit-identical weights.
        num_layers: Number of joint transformer blocks.
        attention_head_dim: Transformer attention head size.
        num_attention_heads: Transformer heads (inner dim = heads * head_dim).
        text_dim: T5 ``d_model`` = transformer ``joint_attention_dim``; the CLIP
            encoders have hidden sizes ``text_dim // 4`` and ``text_dim // 2``
            (``pooled_projection_dim = 3 * text_dim // 4``).  Multiple of 8.
        patch_size: Transformer patch size.
        pixel_space: No VAE: the transformer denoises RGB pixels directly (load the folder with
            ``vae=None``; see :class:`tdmr1_lightning.backbones.sd3.PixelSD3Backbone`).
        words: Whole words the tokenizers keep as one token each (see :func:`_build_tokenizers`).
        clip_max_length: CLIP tokenizer length and position count (77 in SD3).
        t5_position_bias_std: Standard deviation of the T5 encoder's relative-position attention
            bias at initialisation (``None``: transformers' ``d_model ** -0.5``). A frozen random T5
            with the default is nearly a bag of words; a large value (e.g. 5) makes each token's
            output depend on its neighbours, so a model conditioned on it can tell "a red circle and
            a blue square" from "a blue circle and a red square" (docs/experiments/shapes.md, "Text that binds").
        dual_attention_layers: Blocks with SD3.5's second, image-only attention (``attn2``).
        verbose: Print progress to stdout.

    Returns:
        The (absolute) path of the saved pipeline folder.
    """
    import torch
    from diffusers import StableDiffusion3Pipeline

    directory = Path(directory).expanduser().absolute()
    directory.parent.mkdir(parents=True, exist_ok=True)
    # A uniquely named sibling (same filesystem, so the final rename is atomic);
    # plain mkdir so the folder gets the usual umask permissions, unlike mkdtemp.
    tmp = directory.parent / f".{directory.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()

    def log(msg: str) -> None:
        if verbose:
            print(f"[tiny_sd3] {msg}", flush=True)

    t0 = time.perf_counter()
    try:
        with torch.random.fork_rng(devices=[]):
            components = _build_components(
                tmp / ".scratch",
                resolution=resolution,
                seed=seed,
                num_layers=num_layers,
                attention_head_dim=attention_head_dim,
                num_attention_heads=num_attention_heads,
                text_dim=text_dim,
                patch_size=patch_size,
                pixel_space=pixel_space,
                words=words,
                clip_max_length=clip_max_length,
                t5_position_bias_std=t5_position_bias_std,
                dual_attention_layers=dual_attention_layers,
            )
        shutil.rmtree(tmp / ".scratch", ignore_errors=True)
        for name, comp in components.items():
            if isinstance(comp, torch.nn.Module):
                n = sum(p.numel() for p in comp.parameters())
                log(f"{name:15s} {type(comp).__name__:30s} {n:>9,d} params")
        log(f"components built in {time.perf_counter() - t0:.2f}s")
        pipe = StableDiffusion3Pipeline(**components, image_encoder=None, feature_extractor=None)
        _save_pipeline(pipe, tmp)
        if not (tmp / _MODEL_INDEX).is_file():
            raise RuntimeError(f"save_pretrained did not write {_MODEL_INDEX} in {tmp}")
        install_folder(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"saved to {directory} in {time.perf_counter() - t0:.2f}s")
    return directory


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive inter-process lock on ``path`` (no-op where ``fcntl`` is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX: rely on the atomic rename
        yield
        return
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def ensure_tiny_sd3(directory: str | Path, **kwargs: Any) -> Path:
    """Return ``directory`` if it already holds a saved pipeline, else build it.

    Concurrent callers (several processes or DDP ranks) are serialised with a
    ``fcntl`` lock on a hidden sibling ``.<name>.lock`` file, so the pipeline is
    built once.  An existing folder is never checked against ``kwargs``.

    Args:
        directory: Pipeline folder.
        **kwargs: Forwarded to :func:`build_tiny_sd3` when a build is needed.

    Returns:
        The absolute path of the pipeline folder.
    """
    directory = Path(directory).expanduser().absolute()
    if (directory / _MODEL_INDEX).is_file():
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(directory.parent / f".{directory.name}.lock"):
        if (directory / _MODEL_INDEX).is_file():
            return directory
        return build_tiny_sd3(directory, **kwargs)


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: ``tdmr1 tiny DIR [options]``.

    Args:
        argv: Arguments (defaults to ``sys.argv[1:]``).

    Returns:
        Process exit code.
    """
    parser = argparse.ArgumentParser(
        prog="tdmr1 tiny",
        description="Build a tiny random-weight Stable Diffusion 3 pipeline (offline) with save_pretrained.",
    )
    parser.add_argument("directory", type=Path, help="output folder")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--attention-head-dim", type=int, default=16)
    parser.add_argument("--num-attention-heads", type=int, default=2)
    parser.add_argument("--text-dim", type=int, default=32)
    parser.add_argument("--patch-size", type=int, default=2)
    parser.add_argument("--words", nargs="*", default=[], help="whole words kept as single tokens")
    parser.add_argument("--clip-max-length", type=int, default=CLIP_MAX_LENGTH)
    parser.add_argument(
        "--t5-position-bias-std",
        type=float,
        default=None,
        help="std of the T5 relative-position bias at initialisation (default: transformers' d_model ** -0.5)",
    )
    parser.add_argument("--if-missing", action="store_true", help="do nothing if DIR already holds a pipeline")
    args = parser.parse_args(argv)

    kwargs = dict(
        resolution=args.resolution,
        seed=args.seed,
        num_layers=args.num_layers,
        attention_head_dim=args.attention_head_dim,
        num_attention_heads=args.num_attention_heads,
        text_dim=args.text_dim,
        patch_size=args.patch_size,
        words=args.words,
        clip_max_length=args.clip_max_length,
        t5_position_bias_std=args.t5_position_bias_std,
        verbose=True,
    )
    if args.if_missing:
        path = ensure_tiny_sd3(args.directory, **kwargs)
    else:
        path = build_tiny_sd3(args.directory, **kwargs)
    print(path)
    return 0
