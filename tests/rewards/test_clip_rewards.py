"""CLIP score, PickScore and the aesthetic predictor on tiny random-weight CLIP models (no network).

open_clip models are built from tiny config dicts (open_clip's ``model_configs`` format); PickScore
uses a tiny transformers ``CLIPModel`` saved to a folder with a processor whose tokenizer is built
offline from a byte-level character vocabulary.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

open_clip = pytest.importorskip("open_clip")

from tdmr1_rewards import _clip  # noqa: E402
from tdmr1_rewards._clip import hf_image_settings, load_hf_clip, load_open_clip, preprocess_images  # noqa: E402
from tdmr1_rewards.clip_rewards import AestheticHead, AestheticScore, CLIPScore, PickScore  # noqa: E402

from tdmr1_lightning.reward import Reward  # noqa: E402

TINY = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
PROMPTS = ["a red cube", "a red cube", "two dogs on a beach, " * 10, ""]


def _images(n: int = 4, h: int = 40, w: int = 48, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, h, w), generator=g, dtype=torch.uint8)


def _check_output(out, n: int) -> None:
    assert out.scores.shape == (n,) and out.scores.dtype == torch.float32
    assert out.valid.shape == (n,) and out.valid.dtype == torch.bool and out.valid.all()
    assert torch.isfinite(out.scores).all()


# ----------------------------------------------------------------------------------------- preprocessing
@pytest.mark.parametrize("mode", ["shortest", "squash", "longest"])
@pytest.mark.parametrize("hw", [(40, 48), (48, 40), (32, 32), (20, 24)])
def test_preprocess_shapes_and_modes(mode: str, hw: tuple[int, int]) -> None:
    images = _images(2, *hw)
    out = preprocess_images(images, (32, 32), resize_mode=mode)
    assert out.shape == (2, 3, 32, 32) and out.dtype == torch.float32
    # a list of differently sized images gives the same rows as the batched call
    mixed = preprocess_images([images[0], _images(1, 24, 60)[0], images[1]], (32, 32), resize_mode=mode)
    assert torch.allclose(mixed[0], out[0]) and torch.allclose(mixed[2], out[1])


def test_preprocess_matches_open_clip_pil_transform() -> None:
    """The tensor pipeline reproduces open_clip's PIL pipeline up to resampling noise."""
    from PIL import Image

    # a smooth image (resampling differences between PIL and torch are largest on noise)
    y, x = torch.meshgrid(torch.linspace(0, 1, 60), torch.linspace(0, 1, 80), indexing="ij")
    img = torch.stack([x, y, (x + y) / 2]).mul(255).round().to(torch.uint8)
    cfg = open_clip.transform.PreprocessCfg(size=32)
    pil = open_clip.transform.image_transform_v2(cfg, is_train=False)(Image.fromarray(img.permute(1, 2, 0).numpy()))
    ours = preprocess_images(img[None], (32, 32))[0]
    assert ours.shape == pil.shape
    assert (ours - pil).abs().mean() < 0.01  # normalised units (about 0.003 of the [0, 1] range)


# ----------------------------------------------------------------------------------------- open_clip loading
def test_encoder_features_and_sharing() -> None:
    a = load_open_clip(TINY, None)
    loads = _clip.load_count()
    b = load_open_clip(json.loads(json.dumps(TINY)), None)  # an equal dict is the same model
    assert a is b and _clip.load_count() == loads
    assert a.embed_dim == 16 and not any(p.requires_grad for p in a.model.parameters())
    img = a.encode_images(_images(3))
    txt = a.encode_text(PROMPTS)
    assert img.shape == (3, 16) and txt.shape == (4, 16)
    assert torch.allclose(img.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(txt[0], txt[1])  # repeated prompts are encoded once
    # the same features as the model's own encoders on the preprocessed pixels
    with torch.no_grad():
        ref = a.model.encode_image(a.preprocess(_images(3)), normalize=True)
    assert torch.allclose(img, ref, atol=1e-5)


def test_random_dict_config_is_deterministic_and_checkpoint_file_loads(tmp_path: Path) -> None:
    enc = load_open_clip(TINY, None)
    other = copy.deepcopy(TINY)
    other["vision_cfg"]["mlp_ratio"] = 2.0  # a different architecture
    ckpt_model = open_clip.CLIP(**other)
    for p in ckpt_model.parameters():  # weights unlike the seeded init
        torch.nn.init.normal_(p, std=0.05)
    path = tmp_path / "tiny.pt"
    torch.save(ckpt_model.state_dict(), path)
    from_file = load_open_clip(other, str(path))
    images = _images(2)
    with torch.no_grad():
        ref = F.normalize(ckpt_model.eval().encode_image(from_file.preprocess(images)), dim=-1)
    assert torch.allclose(from_file.encode_images(images), ref, atol=1e-5)
    # the seeded random init does not depend on the global RNG state
    torch.manual_seed(123)
    _clip.clear_cache()
    again = load_open_clip(TINY, None)
    assert again is not enc
    assert torch.allclose(again.encode_images(images), enc.encode_images(images))
    with pytest.raises(FileNotFoundError, match="checkpoint file"):
        load_open_clip(TINY, "openai")  # a tag makes no sense with a custom architecture


def test_local_dir_model(tmp_path: Path) -> None:
    """The named-model path (open_clip.create_model / get_tokenizer) through a ``local-dir:`` folder."""
    net = open_clip.CLIP(**TINY)
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY, "preprocess_cfg": {}}))
    torch.save(net.state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    reward = CLIPScore(model=f"local-dir:{tmp_path}", pretrained=None)
    out = reward(_images(2), PROMPTS[:2])
    _check_output(out, 2)
    with torch.no_grad():
        enc = reward.encoder
        tokens = open_clip.SimpleTokenizer(context_length=16)(PROMPTS[:2])
        ref = (
            F.normalize(net.eval().encode_image(enc.preprocess(_images(2))), dim=-1)
            * F.normalize(net.encode_text(tokens), dim=-1)
        ).sum(-1)
    assert torch.allclose(out.scores, ref, atol=1e-5)


def test_openai_tag_gets_quick_gelu(monkeypatch: pytest.MonkeyPatch) -> None:
    """open_clip >= 3 builds ``ViT-L-14`` with GELU for the QuickGELU-trained OpenAI weights (a warning
    only); the loader asks for the tag's activation. ``create_model`` is stubbed (no download)."""
    calls = []

    def fake_create_model(name, pretrained=None, **kw):
        calls.append((name, pretrained, kw["force_quick_gelu"]))
        net = open_clip.CLIP(**TINY)
        open_clip.set_model_preprocess_cfg(net, {"size": 32, "mean": (0.5,) * 3, "std": (0.5,) * 3})
        return net

    monkeypatch.setattr(open_clip, "create_model", fake_create_model)
    _clip.clear_cache()
    enc = load_open_clip("ViT-L-14", "openai")
    load_open_clip("ViT-L-14", "laion2b_s32b_b82k")
    assert calls == [("ViT-L-14", "openai", True), ("ViT-L-14", "laion2b_s32b_b82k", False)]
    assert enc.mean == (0.5,) * 3 and enc.size == (32, 32)  # the model's own preprocessing settings
    _clip.clear_cache()


# ----------------------------------------------------------------------------------------- CLIP score
def test_clip_score() -> None:
    reward = CLIPScore(model=TINY, pretrained=None, batch_size=3)
    assert isinstance(reward, Reward) and not reward.encoder_loaded  # nothing loaded when built
    images = _images(4)
    out = reward(images, PROMPTS)
    _check_output(out, 4)
    enc = reward.encoder
    cos = (enc.encode_images(images) * enc.encode_text(PROMPTS)).sum(-1)
    assert torch.allclose(out.scores, cos, atol=1e-6)  # 100 * cos / 100, whatever the learnt temperature
    assert (out.scores.abs() <= 1 + 1e-6).all()
    assert torch.allclose(out.scores[0:1], reward(images[:1], PROMPTS[:1]).scores, atol=1e-6)  # batch-independent
    low = CLIPScore(model=TINY, pretrained=None, precision="bf16")(images, PROMPTS)
    assert low.scores.dtype == torch.float32 and torch.allclose(low.scores, out.scores, atol=0.05)


def test_rewards_share_one_model_and_survive_copies(tmp_path: Path) -> None:
    head = tmp_path / "head.pt"
    torch.save(AestheticHead(16).state_dict(), head)
    clip_score = CLIPScore(model=TINY, pretrained=None)
    aesthetic = AestheticScore(str(head), model=TINY, pretrained=None)
    clip_score(_images(1), ["x"])
    loads = _clip.load_count()
    aesthetic(_images(1), ["x"])
    assert aesthetic.encoder is clip_score.encoder and _clip.load_count() == loads
    clone = copy.deepcopy(aesthetic)  # the shared encoder is not copied; it is fetched again
    assert not clone.encoder_loaded
    assert torch.allclose(clone(_images(2), ["a", "b"]).scores, aesthetic(_images(2), ["a", "b"]).scores)
    assert clone.encoder is aesthetic.encoder
    aesthetic.to("cpu")
    assert aesthetic.encoder is clip_score.encoder


# ----------------------------------------------------------------------------------------- PickScore
def _tiny_hf_clip(folder: Path) -> Path:
    from tokenizers import pre_tokenizers
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab.update({c + "</w>": len(alphabet) + i for i, c in enumerate(alphabet)})
    bos, eos = len(vocab), len(vocab) + 1
    vocab.update({"<|startoftext|>": bos, "<|endoftext|>": eos})
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=16,
            bos_token_id=bos,
            eos_token_id=eos,
            pad_token_id=eos,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
        logit_scale_init_value=4.6052,  # exp = 100, like PickScore's
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder / "model")
    image_processor = CLIPImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder / "processor")
    return folder


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_hf_clip(tmp_path_factory.mktemp("tiny_hf_clip"))


def test_pickscore(tiny_hf: Path) -> None:
    from PIL import Image
    from transformers import AutoProcessor, CLIPModel

    reward = PickScore(model=str(tiny_hf / "model"), processor=str(tiny_hf / "processor"), batch_size=3)
    images = _images(4, 50, 40)
    out = reward(images, PROMPTS)
    _check_output(out, 4)
    raw = torch.tensor(out.details["pickscore"])
    assert torch.allclose(out.scores, raw / 26, atol=1e-6)

    # reference: the PickScore recipe with the transformers processor on PIL images
    model = CLIPModel.from_pretrained(tiny_hf / "model").eval()
    proc = AutoProcessor.from_pretrained(tiny_hf / "processor")
    pil = [Image.fromarray(im.permute(1, 2, 0).numpy()) for im in images]
    with torch.no_grad():
        px = proc(images=pil, return_tensors="pt")["pixel_values"]
        tok = proc(text=PROMPTS, padding=True, truncation=True, max_length=16, return_tensors="pt")
        img = model.get_image_features(pixel_values=px)
        txt = model.get_text_features(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"])
        img, txt = (getattr(t, "pooler_output", t) for t in (img, txt))
        ref = model.logit_scale.exp() * (F.normalize(img, dim=-1) * F.normalize(txt, dim=-1)).sum(-1)
    assert (reward.encoder.preprocess(images) - px).abs().mean() < 0.02  # resampling noise only
    assert torch.allclose(raw, ref, atol=0.1)  # raw scores are 100 x cosines
    # the text side is exact
    enc = reward.encoder
    assert torch.allclose(enc.encode_text(PROMPTS), F.normalize(txt, dim=-1), atol=1e-5)
    assert load_hf_clip(str(tiny_hf / "model"), str(tiny_hf / "processor")) is enc  # shared


def test_hf_image_settings() -> None:
    from transformers import CLIPImageProcessor

    s = hf_image_settings(CLIPImageProcessor())  # CLIP's defaults
    assert s["size"] == (224, 224) and s["resize_mode"] == "shortest" and s["resize_short"] == 224
    assert s["interpolation"] == "bicubic"
    s = hf_image_settings(CLIPImageProcessor(size={"height": 20, "width": 30}, do_center_crop=False))
    assert s["size"] == (20, 30) and s["resize_mode"] == "squash"
    with pytest.raises(ValueError, match="divisor"):
        PickScore(divisor=0)


# ----------------------------------------------------------------------------------------- aesthetic
@pytest.mark.parametrize("fmt", ["pth", "safetensors", "wrapped"])
def test_aesthetic_score(tmp_path: Path, fmt: str) -> None:
    torch.manual_seed(1)
    head = AestheticHead(16).eval()
    state = head.state_dict()
    assert sorted({k.split(".")[1] for k in state}) == ["0", "2", "4", "6", "7"]  # LAION's key layout
    path = tmp_path / f"head.{'safetensors' if fmt == 'safetensors' else 'pth'}"
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}} if fmt == "wrapped" else state, path)
    reward = AestheticScore(str(path), model=TINY, pretrained=None)
    images = _images(3)
    out = reward(images, ["ignored"] * 3)
    _check_output(out, 3)
    with torch.no_grad():
        ref = head(reward.encoder.encode_images(images)).squeeze(-1)
    assert torch.allclose(out.scores, ref, atol=1e-5)


def test_aesthetic_bad_heads(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="improved-aesthetic-predictor"):
        AestheticScore(str(tmp_path / "missing.pth"), model=TINY, pretrained=None)
    path = tmp_path / "head768.pth"
    torch.save(AestheticHead(768).state_dict(), path)  # a ViT-L/14 head on a 16-d model
    reward = AestheticScore(str(path), model=TINY, pretrained=None)
    with pytest.raises(ValueError, match="16-d CLIP features"):
        reward(_images(1), ["x"])
