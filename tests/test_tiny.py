"""Tests for the offline tiny Stable Diffusion 3 pipeline builder."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tdmr1_lightning import tiny
from tdmr1_lightning.tiny import build_tiny_sd3, clip_hidden_sizes, ensure_tiny_sd3

RES = 32
TEXTS = [
    "a red circle",
    'A photo of 3 "blue" cubes, 42% off! (maybe?) #tag @home $5 & more...',
    "it's   multiple\tspaces\nand newlines: x=1; y<2>{z}[w]|~`^_\\/",
    "",
]


def _state(path: Path, component: str) -> dict[str, torch.Tensor]:
    files = sorted((path / component).glob("*.safetensors"))
    assert files, f"no weights in {path / component}"
    out: dict[str, torch.Tensor] = {}
    for f in files:
        out.update(load_file(str(f)))
    return out


def _load_pipe(path: Path):
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _leftovers(parent: Path, name: str) -> list[Path]:
    return [p for p in parent.iterdir() if p.name.startswith(f".{name}.tmp-") or p.name.startswith(f".{name}.old-")]


# --------------------------------------------------------------------------- round trip


def test_from_pretrained_round_trip(tiny_sd3_path: Path) -> None:
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
    )
    from transformers import CLIPTextModelWithProjection, T5EncoderModel

    assert (tiny_sd3_path / "model_index.json").is_file()
    pipe = _load_pipe(tiny_sd3_path)
    assert isinstance(pipe.transformer, SD3Transformer2DModel)
    assert isinstance(pipe.vae, AutoencoderKL)
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler)
    assert isinstance(pipe.text_encoder, CLIPTextModelWithProjection)
    assert isinstance(pipe.text_encoder_2, CLIPTextModelWithProjection)
    assert isinstance(pipe.text_encoder_3, T5EncoderModel)
    assert pipe.tokenizer_3 is not None

    out = pipe(
        prompt=["a red circle"] * 2,
        num_inference_steps=2,
        guidance_scale=1.0,
        height=RES,
        width=RES,
        output_type="pt",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert out.shape == (2, 3, RES, RES)
    assert torch.isfinite(out).all()

    # default size = transformer.sample_size * vae_scale_factor, and CFG works
    out = pipe(prompt="x", num_inference_steps=1, guidance_scale=3.0, output_type="pt", max_sequence_length=16).images
    assert out.shape == (1, 3, RES, RES)


def test_config_is_sd3_consistent(tiny_sd3_path: Path) -> None:
    pipe = _load_pipe(tiny_sd3_path)
    tcfg = pipe.transformer.config
    latent = RES // pipe.vae_scale_factor
    d1, d2 = clip_hidden_sizes(pipe.text_encoder_3.config.d_model)
    assert tcfg.sample_size == latent
    assert tcfg.pos_embed_max_size == latent // tcfg.patch_size
    assert tcfg.in_channels == tcfg.out_channels == pipe.vae.config.latent_channels
    assert tcfg.joint_attention_dim == pipe.text_encoder_3.config.d_model
    assert tcfg.caption_projection_dim == tcfg.num_attention_heads * tcfg.attention_head_dim
    assert (pipe.text_encoder.config.hidden_size, pipe.text_encoder_2.config.hidden_size) == (d1, d2)
    assert (pipe.text_encoder.config.projection_dim, pipe.text_encoder_2.config.projection_dim) == (d1, d2)
    assert tcfg.pooled_projection_dim == d1 + d2 <= tcfg.joint_attention_dim
    assert pipe.vae.config.scaling_factor == pytest.approx(1.5305)
    assert pipe.vae.config.shift_factor == pytest.approx(0.0609)
    assert pipe.scheduler.config.shift == pytest.approx(3.0)
    assert pipe.tokenizer.model_max_length == pipe.tokenizer_2.model_max_length == 77
    # CLIP pooling looks for the eos id of the tokenizer
    assert pipe.text_encoder.config.eos_token_id == pipe.tokenizer.eos_token_id


def test_encode_prompt_uses_all_three_encoders(tiny_sd3_path: Path) -> None:
    pipe = _load_pipe(tiny_sd3_path)
    d_model = pipe.text_encoder_3.config.d_model
    d1, d2 = clip_hidden_sizes(d_model)
    pe, npe, pooled, npooled = pipe.encode_prompt(
        prompt=["a red circle", "Two 2 cats!"],
        prompt_2=None,
        prompt_3=None,
        do_classifier_free_guidance=True,
        device="cpu",
    )
    # 77 CLIP tokens + 256 T5 tokens (default max_sequence_length)
    assert pe.shape == npe.shape == (2, 77 + 256, d_model)
    assert pooled.shape == npooled.shape == (2, d1 + d2)
    for t in (pe, npe, pooled, npooled):
        assert torch.isfinite(t).all()
    assert pe[:, 77:].abs().sum() > 0  # T5 part is real, not the zeros used when text_encoder_3 is None
    assert pe[:, :77, : d1 + d2].abs().sum() > 0
    assert pe[:, :77, d1 + d2 :].abs().sum() == 0  # CLIP features zero-padded to the T5 width
    assert not torch.allclose(pe[0], pe[1])
    assert not torch.allclose(pe, npe)

    short, *_ = pipe.encode_prompt(
        prompt="a red circle",
        prompt_2=None,
        prompt_3=None,
        do_classifier_free_guidance=False,
        device="cpu",
        max_sequence_length=16,
    )
    assert short.shape == (1, 77 + 16, d_model)


# --------------------------------------------------------------------------- determinism


def test_same_seed_identical_weights_different_seed_differs(tmp_path: Path) -> None:
    a = build_tiny_sd3(tmp_path / "a", seed=0)
    b = build_tiny_sd3(tmp_path / "b", seed=0)
    c = build_tiny_sd3(tmp_path / "c", seed=1)
    for comp in ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        sa, sb = _state(a, comp), _state(b, comp)
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), f"{comp}.{k} differs for the same seed"
    for comp in ("transformer", "vae", "text_encoder_3"):
        sa, sc = _state(a, comp), _state(c, comp)
        assert any(not torch.equal(sa[k], sc[k]) for k in sa), f"{comp} identical for different seeds"
    for name in (
        "model_index.json",
        "transformer/config.json",
        "tokenizer/tokenizer.json",
        "tokenizer_3/tokenizer.json",
    ):
        assert (a / name).read_bytes() == (b / name).read_bytes()


def test_build_leaves_global_rng_untouched(tmp_path: Path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    build_tiny_sd3(tmp_path / "x", seed=7)
    assert torch.equal(torch.rand(4), expected)


def test_custom_sizes(tmp_path: Path) -> None:
    path = build_tiny_sd3(
        tmp_path / "big", resolution=64, num_layers=1, text_dim=64, attention_head_dim=8, num_attention_heads=4
    )
    pipe = _load_pipe(path)
    assert pipe.transformer.config.pos_embed_max_size == 64 // 2 // 2
    out = pipe(
        prompt="a",
        num_inference_steps=1,
        guidance_scale=1.0,
        height=64,
        width=64,
        output_type="pt",
        max_sequence_length=8,
    ).images
    assert out.shape == (1, 3, 64, 64)
    with pytest.raises(ValueError):
        build_tiny_sd3(tmp_path / "bad", resolution=30)
    assert not (tmp_path / "bad").exists()
    assert not _leftovers(tmp_path, "bad")


# --------------------------------------------------------------------------- tokenizers


def test_tokenizers_load_offline_and_cover_text(tiny_sd3_path: Path) -> None:
    from transformers import AutoTokenizer, CLIPTokenizer, T5TokenizerFast

    for sub in ("tokenizer", "tokenizer_2"):
        for cls in (CLIPTokenizer, AutoTokenizer):
            tok = cls.from_pretrained(tiny_sd3_path / sub, local_files_only=True)
            assert tok.model_max_length == 77
            for text in TEXTS + ["ünïcödé 日本語 emoji 🙂"]:
                ids = tok(text).input_ids
                assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
                # unk == eos for CLIP: no unknown token may appear inside the text
                assert tok.unk_token_id not in ids[1:-1]
                assert len(ids) > 2 or text == ""
            batch = tok(TEXTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
            assert batch.input_ids.shape == (len(TEXTS), 77)

    for cls in (T5TokenizerFast, AutoTokenizer):
        tok = cls.from_pretrained(tiny_sd3_path / "tokenizer_3", local_files_only=True)
        assert tok.pad_token_id == 0 and tok.eos_token_id == 1 and tok.unk_token_id == 2
        for text in TEXTS:
            ids = tok(text).input_ids
            assert ids[-1] == tok.eos_token_id
            assert tok.unk_token_id not in ids, (text, tok.convert_ids_to_tokens(ids))
            assert tok.decode(ids, skip_special_tokens=True) == " ".join(text.split())
        batch = tok(
            TEXTS, padding="max_length", max_length=256, truncation=True, add_special_tokens=True, return_tensors="pt"
        )
        assert batch.input_ids.shape == (len(TEXTS), 256)
        assert int(batch.input_ids.max()) < 200


# --------------------------------------------------------------------------- ensure / atomicity


def test_ensure_does_not_rebuild(tiny_sd3_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    index = tiny_sd3_path / "model_index.json"
    weights = next((tiny_sd3_path / "transformer").glob("*.safetensors"))
    before = (index.stat().st_mtime_ns, weights.stat().st_mtime_ns)

    def boom(*args, **kwargs):
        raise AssertionError("ensure_tiny_sd3 rebuilt an existing pipeline")

    monkeypatch.setattr(tiny, "build_tiny_sd3", boom)
    assert ensure_tiny_sd3(tiny_sd3_path) == tiny_sd3_path
    assert ensure_tiny_sd3(str(tiny_sd3_path), seed=5) == tiny_sd3_path
    assert (index.stat().st_mtime_ns, weights.stat().st_mtime_ns) == before


def test_ensure_builds_missing_once_under_concurrency(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "nested" / "shared"
    calls: list[int] = []
    real_build = tiny.build_tiny_sd3

    def counting_build(*args, **kwargs):
        calls.append(1)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(tiny, "build_tiny_sd3", counting_build)
    results: list[Path] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            results.append(ensure_tiny_sd3(target, seed=3))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(calls) == 1
    assert results == [target] * 4
    assert (target / "model_index.json").is_file()
    assert not _leftovers(target.parent, target.name)


def test_interrupted_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_save = tiny._save_pipeline

    def save_then_crash(pipe, directory: Path) -> None:
        real_save(pipe, directory)  # half-written folder exists in the temp dir ...
        raise KeyboardInterrupt("simulated interruption")  # ... when the process is interrupted

    monkeypatch.setattr(tiny, "_save_pipeline", save_then_crash)
    target = tmp_path / "tiny"
    with pytest.raises(KeyboardInterrupt):
        build_tiny_sd3(target)
    assert not target.exists()
    assert not _leftovers(tmp_path, "tiny")

    with pytest.raises(KeyboardInterrupt):
        ensure_tiny_sd3(target)
    assert not target.exists()

    monkeypatch.setattr(tiny, "_save_pipeline", real_save)
    assert (ensure_tiny_sd3(target) / "model_index.json").is_file()
    assert not _leftovers(tmp_path, "tiny")


def test_rebuild_replaces_existing_folder(tmp_path: Path) -> None:
    target = build_tiny_sd3(tmp_path / "p", seed=0)
    (target / "stale.txt").write_text("old")
    build_tiny_sd3(target, seed=1)
    assert not (target / "stale.txt").exists()
    assert (target / "model_index.json").is_file()
    assert not _leftovers(tmp_path, "p")
    ref = build_tiny_sd3(tmp_path / "ref", seed=1)
    assert all(torch.equal(v, _state(ref, "transformer")[k]) for k, v in _state(target, "transformer").items())


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "cli"
    assert tiny.main([str(target), "--seed", "2", "--num-layers", "1"]) == 0
    out = capsys.readouterr().out
    assert "SD3Transformer2DModel" in out and str(target) in out
    cfg = json.loads((target / "transformer" / "config.json").read_text())
    assert cfg["num_layers"] == 1
    mtime = (target / "model_index.json").stat().st_mtime_ns
    assert tiny.main([str(target), "--if-missing"]) == 0
    assert (target / "model_index.json").stat().st_mtime_ns == mtime


# --------------------------------------------------------------------------- whole-word tokenizers

WORLD_WORDS = [
    "a",
    "photo",
    "of",
    "and",
    "left",
    "right",
    "above",
    "below",
    "two",
    "three",
    "circle",
    "circles",
    "square",
    "squares",
    "triangle",
    "triangles",
    "red",
    "green",
    "blue",
    "yellow",
]


def test_word_merges_keep_every_word_whole_despite_shared_pairs() -> None:
    from tdmr1_lightning.tiny import _bpe, clip_word_merges

    # "re" of "red" would split "green", "three" and "squares" under a naive ranking
    merges = clip_word_merges(WORLD_WORDS)
    ranks = {pair: i for i, pair in enumerate(merges)}
    for word in WORLD_WORDS:
        assert _bpe(word, ranks) == [word + "</w>"], word
    with pytest.raises(ValueError, match="ASCII letters"):
        clip_word_merges(["left of"])


def test_word_tokenizers_make_prompts_short(tmp_path: Path) -> None:
    import torch
    from diffusers import StableDiffusion3Pipeline

    from tdmr1_lightning.tiny import build_tiny_sd3

    path = build_tiny_sd3(tmp_path / "words", words=WORLD_WORDS, clip_max_length=16, pixel_space=True, patch_size=4)
    pipe = StableDiffusion3Pipeline.from_pretrained(str(path), vae=None, local_files_only=True)
    prompt = "a photo of a yellow triangle left of a green square"
    assert len(pipe.tokenizer.tokenize(prompt)) == len(prompt.split())
    assert len(pipe.tokenizer_3.tokenize(prompt)) == len(prompt.split())
    assert pipe.tokenizer.model_max_length == 16
    # out-of-vocabulary text still tokenizes, character by character
    assert len(pipe.tokenizer.tokenize("greener")) > 1
    with torch.no_grad():
        embeds, _, pooled, _ = pipe.encode_prompt(
            prompt, None, None, do_classifier_free_guidance=False, max_sequence_length=16
        )
    assert embeds.shape[1] == 16 + 16  # CLIP tokens + T5 tokens


def test_a_sharp_t5_position_bias_makes_tokens_carry_their_neighbours(tmp_path: Path) -> None:
    from transformers import AutoTokenizer, T5EncoderModel

    def circle_change(path: Path) -> float:
        """Relative change of the T5 output at "circle" when only the colours around it swap."""
        tok = AutoTokenizer.from_pretrained(str(path / "tokenizer_3"), local_files_only=True)
        t5 = T5EncoderModel.from_pretrained(str(path / "text_encoder_3"), local_files_only=True)
        texts = ["a photo of a red circle and a blue square", "a photo of a blue circle and a red square"]
        with torch.no_grad():
            out = t5(**tok(texts, return_tensors="pt")).last_hidden_state
        at = texts[0].split().index("circle")
        return float((out[0, at] - out[1, at]).norm() / out[0, at].norm())

    default = build_tiny_sd3(tmp_path / "default", words=WORLD_WORDS, num_layers=1)
    sharp = build_tiny_sd3(tmp_path / "sharp", words=WORLD_WORDS, num_layers=1, t5_position_bias_std=5.0)
    bias = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    assert 3.0 < _state(sharp, "text_encoder_3")[bias].std() < 7.0
    assert _state(default, "text_encoder_3")[bias].std() < 0.5
    # everything else is the same seeded draw
    rest = {k: v for k, v in _state(default, "text_encoder_3").items() if k != bias}
    assert all(torch.equal(v, _state(sharp, "text_encoder_3")[k]) for k, v in rest.items())
    assert circle_change(sharp) > 3 * circle_change(default)
    with pytest.raises(ValueError, match="t5_position_bias_std must be positive"):
        build_tiny_sd3(tmp_path / "bad", t5_position_bias_std=0.0)
