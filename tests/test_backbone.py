"""The SD3 backbone on a tiny offline pipeline: roles, LoRA checkpoints, decoding, bad input."""

import pytest
import torch
from safetensors.torch import save_file

from tdmr1_lightning.backbones import SD3Backbone
from tdmr1_lightning.backbones.base import (
    FAKE,
    GENERATOR,
    GENERATOR_EMA,
    SURROGATE,
    SURROGATE_OLD,
    TEACHER,
    LoraCheckpointError,
    unique_tensor_bytes,
)
from tdmr1_lightning.backbones.hub import ModelNotFoundError

ROLES = [GENERATOR, FAKE, GENERATOR_EMA, SURROGATE, SURROGATE_OLD]


@pytest.fixture(scope="module")
def backbone(tiny_sd3_path):
    bb = SD3Backbone(str(tiny_sd3_path), resolution=32, lora_rank=4, lora_alpha=8, max_sequence_length=32)
    bb.build(ROLES)
    return bb


def _inputs(bb, n=2):
    torch.manual_seed(0)
    return torch.randn(n, *bb.latent_shape), bb.encode_prompts(["a red circle", 'a sign that says "HI"'][:n])


def test_new_roles_equal_the_teacher(backbone):
    x, c = _inputs(backbone)
    v_teacher = backbone.velocity(TEACHER, x, 0.75, c)
    for role in ROLES:
        assert torch.allclose(backbone.velocity(role, x, 0.75, c), v_teacher, atol=1e-6), role


def test_training_one_role_changes_only_that_role(backbone):
    x, c = _inputs(backbone)
    before = {r: backbone.velocity(r, x, 0.5, c).detach() for r in [TEACHER, *ROLES]}
    base_before = [p.clone() for p in backbone.roles.parameters_of(TEACHER)]
    params = backbone.roles.parameters_of(FAKE)
    opt = torch.optim.SGD(params, lr=1.0)
    # switch to another role between the forward and the backward: the gradient must still land on `fake`
    out = backbone.velocity(FAKE, x, 0.5, c)
    backbone.velocity(GENERATOR, x, 0.5, c)
    out.square().mean().backward()
    assert all(p.grad is not None for p in params)
    others = [p for r in (GENERATOR, SURROGATE) for p in backbone.roles.parameters_of(r)]
    assert all(p.grad is None for p in others)
    opt.step()
    opt.zero_grad(set_to_none=True)
    assert not torch.allclose(backbone.velocity(FAKE, x, 0.5, c), before[FAKE])
    for role in [TEACHER, GENERATOR, SURROGATE, GENERATOR_EMA]:
        assert torch.equal(backbone.velocity(role, x, 0.5, c), before[role]), role
    assert all(torch.equal(a, b) for a, b in zip(base_before, backbone.roles.parameters_of(TEACHER)))
    backbone.roles.copy_role_(FAKE, SURROGATE)  # restore for the other tests (surrogate is untouched: B = 0)


def test_ema_update_moves_towards_the_source(backbone):
    gen, ema = backbone.roles.parameters_of(GENERATOR), backbone.roles.parameters_of(GENERATOR_EMA)
    with torch.no_grad():
        for p in gen:
            p.add_(1.0)
    backbone.roles.ema_update_(GENERATOR_EMA, 0.75)
    assert all(torch.allclose(e, 0.25 * g + 0.75 * (g - 1.0), atol=1e-6) for e, g in zip(ema, gen))
    with torch.no_grad():
        for p in gen:
            p.sub_(1.0)
    backbone.roles.copy_role_(GENERATOR_EMA, GENERATOR)


def test_decode_gives_uint8_images_and_inverts_encode(backbone):
    images = backbone.decode(torch.randn(2, *backbone.latent_shape))
    assert images.dtype == torch.uint8 and images.shape == (2, 3, 32, 32)
    latents = backbone.encode_images(images)
    assert latents.shape == (2, *backbone.latent_shape)


def test_guided_velocity_is_cfg(backbone):
    x, c = _inputs(backbone)
    vc = backbone.velocity(TEACHER, x, 0.9, c)
    vu = backbone.velocity(TEACHER, x, 0.9, backbone.null_condition(2))
    assert torch.allclose(backbone.guided_velocity(TEACHER, x, 0.9, c, 4.5), vu + 4.5 * (vc - vu), atol=1e-5)


def _lora_state(backbone, scale=0.01, prefix="transformer."):
    """A LoRA state dict in diffusers' saved format for the tiny transformer (adapter name removed)."""
    g = torch.Generator().manual_seed(1)
    out = {}
    for name, p in backbone.roles.base.named_parameters():
        if f".lora_A.{GENERATOR}." in name or f".lora_B.{GENERATOR}." in name:
            out[prefix + name.replace(f".{GENERATOR}.", ".")] = scale * torch.randn(p.shape, generator=g)
    return out


def test_generator_starts_from_a_lora_checkpoint(tmp_path, tiny_sd3_path, backbone):
    path = tmp_path / "tdm_lora.safetensors"
    state = _lora_state(backbone)
    save_file(state, str(path))  # no alpha stated: alpha = rank, as diffusers reads it
    bb = SD3Backbone(
        str(tiny_sd3_path),
        resolution=32,
        lora_rank=4,
        lora_alpha=4,
        max_sequence_length=32,
        generator_checkpoint=str(path),
    )
    bb.build([GENERATOR, GENERATOR_EMA, FAKE])
    x, c = _inputs(bb)
    assert not torch.allclose(bb.velocity(GENERATOR, x, 0.9, c), bb.velocity(TEACHER, x, 0.9, c))
    assert torch.equal(bb.velocity(GENERATOR_EMA, x, 0.9, c), bb.velocity(GENERATOR, x, 0.9, c))
    assert torch.allclose(bb.velocity(FAKE, x, 0.9, c), bb.velocity(TEACHER, x, 0.9, c), atol=1e-6)
    # the same weights through a torch checkpoint (read with weights_only) and in full-copy mode
    pt = tmp_path / "tdm_lora.pt"
    torch.save({k.replace("transformer.", "base_model.model."): v for k, v in state.items()}, pt)
    bb_pt = SD3Backbone(
        str(tiny_sd3_path),
        resolution=32,
        lora_rank=4,
        lora_alpha=4,
        max_sequence_length=32,
        generator_checkpoint=str(pt),
    )
    bb_pt.build([GENERATOR])
    assert torch.allclose(bb_pt.velocity(GENERATOR, x, 0.9, c), bb.velocity(GENERATOR, x, 0.9, c), atol=1e-6)
    bb_full = SD3Backbone(
        str(tiny_sd3_path),
        resolution=32,
        roles_as="full",
        lora_rank=4,
        lora_alpha=4,
        max_sequence_length=32,
        generator_checkpoint=str(path),
    )
    bb_full.build([GENERATOR])
    assert torch.allclose(bb_full.velocity(GENERATOR, x, 0.9, c), bb.velocity(GENERATOR, x, 0.9, c), atol=1e-5)


def test_lora_checkpoint_with_foreign_keys_is_refused(tmp_path, tiny_sd3_path, backbone):
    state = _lora_state(backbone)
    state["transformer.no_such_block.attn.to_q.lora_A.weight"] = torch.zeros(4, 8)
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    with pytest.raises(LoraCheckpointError, match=r"bad\.safetensors.*first unmatched key: 'no_such_block"):
        SD3Backbone(str(tiny_sd3_path), resolution=32, lora_rank=4, lora_alpha=4, generator_checkpoint=str(path))
    # a key of the right family that names no LoRA layer of this transformer is refused when it is built
    state = _lora_state(backbone)
    state["transformer.transformer_blocks.0.ff.net.2.lora_A.weight"] = torch.zeros(4, 8)
    save_file(state, str(path))
    bb = SD3Backbone(str(tiny_sd3_path), resolution=32, lora_rank=4, lora_alpha=4, generator_checkpoint=str(path))
    with pytest.raises(
        LoraCheckpointError, match=r"first unmatched key: 'transformer_blocks.0.ff.net.2.lora_A.weight'"
    ):
        bb.build([GENERATOR])
    wrong_rank = tmp_path / "rank4.safetensors"
    save_file(_lora_state(backbone), str(wrong_rank))
    with pytest.raises(LoraCheckpointError, match="rank-4 LoRA but lora_rank is 8: set lora_rank: 4"):
        SD3Backbone(str(tiny_sd3_path), resolution=32, lora_rank=8, generator_checkpoint=str(wrong_rank))


def test_lora_checkpoint_checked_before_models_load(tmp_path, tiny_sd3_path):
    with pytest.raises(LoraCheckpointError, match="no such file"):
        SD3Backbone(str(tiny_sd3_path), generator_checkpoint=str(tmp_path / "missing.safetensors"))
    not_lora = tmp_path / "weights.safetensors"
    save_file({"proj.weight": torch.zeros(2, 2)}, str(not_lora))
    with pytest.raises(LoraCheckpointError, match="weights.safetensors holds no LoRA"):
        SD3Backbone(str(tiny_sd3_path), generator_checkpoint=str(not_lora))
    pickled = tmp_path / "evil.pt"
    torch.save({"x": object()}, pickled)
    with pytest.raises(LoraCheckpointError, match="evil.pt"):
        SD3Backbone(str(tiny_sd3_path), resolution=32, lora_rank=4, generator_checkpoint=str(pickled))


@pytest.mark.parametrize(
    "reference,match",
    [
        ("stabilityai/not-a-cached-model", "not in the hub cache"),
        ("./no/such/folder", "no such local folder"),
    ],
)
def test_unresolvable_model_fails_before_loading(reference, match, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match=match):
        SD3Backbone(reference)


def test_folder_without_model_index_is_refused(tmp_path):
    with pytest.raises(ModelNotFoundError, match="model_index.json"):
        SD3Backbone(str(tmp_path))


def test_resolution_must_fit_the_patch_grid(tiny_sd3_path):
    bb = SD3Backbone(str(tiny_sd3_path), resolution=30)
    with pytest.raises(ValueError, match="resolution 30"):
        bb.build([GENERATOR])


def test_adapter_mode_holds_one_copy_of_the_base(tiny_sd3_path):
    sizes = {}
    for mode in ("lora", "full"):
        bb = SD3Backbone(str(tiny_sd3_path), resolution=32, roles_as=mode, lora_rank=4)
        bb.build(ROLES)
        sizes[mode] = unique_tensor_bytes(bb.roles)
    base = unique_tensor_bytes(bb.roles.base)
    assert sizes["lora"] < 1.5 * base  # base + small adapters
    assert sizes["full"] >= (1 + len(ROLES)) * base  # the teacher and a copy per role


def test_merged_inference_matches_the_adapter_and_restores_the_teacher(backbone):
    x, c = _inputs(backbone)
    with torch.no_grad():
        for p in backbone.roles.parameters_of(GENERATOR_EMA):
            p.add_(0.05 * torch.randn_like(p))  # a non-trivial adapter (B != 0)
    base_before = [p.clone() for p in backbone.roles.parameters_of(TEACHER)]
    with torch.no_grad():
        unmerged = backbone.velocity(GENERATOR_EMA, x, 0.75, c)
        with backbone.roles.merged(GENERATOR_EMA):
            merged = backbone.velocity(GENERATOR_EMA, x, 0.75, c)
        after = backbone.velocity(GENERATOR_EMA, x, 0.75, c)
    assert not torch.allclose(unmerged, backbone.velocity(TEACHER, x, 0.75, c))
    assert torch.allclose(merged, unmerged, atol=1e-5)
    assert torch.equal(after, unmerged)
    assert all(torch.equal(a, b) for a, b in zip(base_before, backbone.roles.parameters_of(TEACHER)))
    backbone.roles.copy_role_(GENERATOR_EMA, GENERATOR)


def test_pixel_space_backbone_has_no_vae(tmp_path):
    from tdmr1_lightning.backbones import PixelSD3Backbone
    from tdmr1_lightning.tiny import build_tiny_sd3

    path = build_tiny_sd3(tmp_path / "pixel", resolution=16, pixel_space=True)
    bb = PixelSD3Backbone(str(path), resolution=16, lora_rank=2, max_sequence_length=16)
    bb.build([GENERATOR])
    assert bb.vae is None and bb.latent_shape == (3, 16, 16)
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    assert torch.equal(bb.decode(bb.encode_images(images)), images)
    c = bb.encode_prompts(["a red circle", "a blue square"])
    assert bb.velocity(GENERATOR, torch.randn(2, 3, 16, 16), 0.5, c).shape == (2, 3, 16, 16)


def test_frozen_text_encoders_stay_deterministic_in_training_mode(backbone):
    # T5's config has dropout 0.1: in training mode it would make every prompt embedding a random draw
    assert any(m.p > 0 for m in backbone.text_encoders.modules() if isinstance(m, torch.nn.Dropout))
    backbone.train()
    try:
        assert backbone.roles.training
        assert not any(encoder.training for encoder in backbone.text_encoders)
        a, b = backbone.encode_prompts(["a red circle"]), backbone.encode_prompts(["a red circle"])
        assert torch.equal(a.tensors["embeds"], b.tensors["embeds"])
        assert torch.equal(
            backbone.null_condition(1).tensors["embeds"], backbone.encode_prompts([""]).tensors["embeds"]
        )
    finally:
        backbone.eval()
