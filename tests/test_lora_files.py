"""The authors' released LoRA formats load as generator_checkpoint with their rank, alpha and scale honoured.

Files are written by the tests with random weights and the real layouts: the TDM SD3 LoRA (diffusers'
``pytorch_lora_weights.safetensors``, applied at 0.125), the TDM SD3.5 LoRA and TDM-R1's ``ema.ckpt``
(the training script's EMA list, in the order of a PEFT model of the transformer), and a PEFT
``save_pretrained`` folder. Each is compared with what the authors' own loading code computes.
"""

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tdmr1_lightning.backbones import SD3Backbone
from tdmr1_lightning.backbones.base import GENERATOR, GENERATOR_EMA, TEACHER, LoraCheckpointError
from tdmr1_lightning.tiny import build_tiny_sd3

# the authors' LoraConfig targets (scripts/train_tdmr1_pub.py)
AUTHORS_TARGETS = [
    "attn.add_k_proj",
    "attn.add_q_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
    "attn.to_k",
    "attn.to_out.0",
    "attn.to_q",
    "attn.to_v",
]


@pytest.fixture(scope="module")
def tiny_sd35_path(tmp_path_factory) -> Path:
    """A tiny SD3.5-architecture pipeline: block 0 has the second, image-only attention (attn2)."""
    return build_tiny_sd3(tmp_path_factory.mktemp("tiny_sd35"), num_layers=2, dual_attention_layers=(0,))


def _inputs(bb, n=2):
    g = torch.Generator().manual_seed(0)
    return torch.randn((n, *bb.latent_shape), generator=g), bb.encode_prompts(
        ["a red circle", 'a sign that says "HI"'][:n]
    )


def _transformer_velocity(transformer, x, s, cond):
    """The transformer called as the authors' scripts call it (timestep 1000 s)."""
    t = torch.full((x.shape[0],), 1000.0 * s)
    return transformer(
        hidden_states=x,
        timestep=t,
        encoder_hidden_states=cond.tensors["embeds"],
        pooled_projections=cond.tensors["pooled"],
        return_dict=False,
    )[0]


def _randomise(params, seed=3, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.copy_(scale * torch.randn(p.shape, generator=g))


def test_tdm_sd3_lora_at_its_scale_matches_stock_diffusers(tmp_path, tiny_sd3_path):
    # The TDM SD3 LoRA is diffusers' format without an alpha (diffusers reads alpha = rank), loaded with
    # pipe.load_lora_weights and applied at pipe.set_adapters(["tdm"], [0.125]).
    from diffusers import StableDiffusion3Pipeline

    shapes = SD3Backbone(str(tiny_sd3_path), resolution=32, lora_rank=4, lora_alpha=4, max_sequence_length=32)
    shapes.build([GENERATOR])
    g = torch.Generator().manual_seed(1)
    state = {
        "transformer." + n.replace(f".{GENERATOR}.", "."): 0.2 * torch.randn(p.shape, generator=g)
        for n, p in shapes.roles.base.named_parameters()
        if f".{GENERATOR}." in n
    }
    folder = tmp_path / "TDM_sd3_lora"
    folder.mkdir()
    save_file(state, str(folder / "pytorch_lora_weights.safetensors"))

    ours = SD3Backbone(
        str(tiny_sd3_path),
        resolution=32,
        lora_rank=4,
        lora_alpha=4,
        max_sequence_length=32,
        generator_checkpoint=str(folder / "pytorch_lora_weights.safetensors"),
        generator_checkpoint_scale=0.125,
    )
    ours.build([GENERATOR, GENERATOR_EMA])
    x, c = _inputs(ours)
    pipe = StableDiffusion3Pipeline.from_pretrained(str(tiny_sd3_path))
    pipe.load_lora_weights(str(folder), adapter_name="tdm")
    pipe.set_adapters(["tdm"], [0.125])
    with torch.no_grad():
        stock = _transformer_velocity(pipe.transformer, x, 0.75, c)
        v = ours.velocity(GENERATOR, x, 0.75, c)
        teacher = ours.velocity(TEACHER, x, 0.75, c)
    assert (v - teacher).abs().max() > 1e-3  # the LoRA does something ...
    assert torch.allclose(v, stock, atol=1e-5), float((v - stock).abs().max())  # ... what diffusers does at 0.125
    assert torch.equal(ours.velocity(GENERATOR_EMA, x, 0.75, c), v)
    # at the configured alpha 8 the update would be twice as large: refused, naming the setting
    with pytest.raises(LoraCheckpointError, match="trained with lora_alpha 4 but lora_alpha is 8: set lora_alpha: 4"):
        SD3Backbone(
            str(tiny_sd3_path),
            resolution=32,
            lora_rank=4,
            lora_alpha=8,
            generator_checkpoint=str(folder / "pytorch_lora_weights.safetensors"),
        )


@pytest.fixture(scope="module")
def authors_model(tiny_sd35_path):
    """The tiny SD3.5 transformer wrapped as the authors' script wraps it, its 'tdm' adapter randomised."""
    from diffusers import SD3Transformer2DModel
    from peft import LoraConfig, get_peft_model

    transformer = SD3Transformer2DModel.from_pretrained(str(tiny_sd35_path), subfolder="transformer")
    config = LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian", target_modules=AUTHORS_TARGETS)
    model = get_peft_model(transformer, config, adapter_name="tdm")
    model.set_adapter("tdm")
    trainable = [p for n, p in model.named_parameters() if "tdm" in n]  # as the script collects them
    _randomise(trainable)
    return model, trainable


def test_authors_ema_checkpoint_loads_in_the_scripts_order(tmp_path, tiny_sd35_path, authors_model):
    # TDM SD3.5 LoRA / TDM-R1 ema.ckpt: EMAModuleWrapper.save -> {"decay", "ema_parameters": [...]}
    model, trainable = authors_model
    ckpt = tmp_path / "tdm_sd3-5_lora.ckpt"
    torch.save({"decay": 0.9, "ema_parameters": [p.detach().clone() for p in trainable]}, ckpt)
    assert not any("attn2" in n for n, _ in model.named_parameters() if "tdm" in n)  # the script leaves attn2 alone
    for roles_as in ("lora", "full"):
        ours = SD3Backbone(
            str(tiny_sd35_path),
            resolution=32,
            roles_as=roles_as,
            lora_rank=4,
            lora_alpha=8,
            max_sequence_length=32,
            generator_checkpoint=str(ckpt),
        )
        ours.build([GENERATOR])
        x, c = _inputs(ours)
        with torch.no_grad():
            theirs = _transformer_velocity(model, x, 0.5, c)
            v = ours.velocity(GENERATOR, x, 0.5, c)
            assert (v - ours.velocity(TEACHER, x, 0.5, c)).abs().max() > 1e-3
        assert torch.allclose(v, theirs, atol=1e-5), (roles_as, float((v - theirs).abs().max()))
    # adapters on attn2 too (the targets "to_q", ...) would need more tensors than the file has
    with pytest.raises(LoraCheckpointError, match=r"holds 30 tensors, but the transformer's 19 LoRA layers need 38"):
        SD3Backbone(
            str(tiny_sd35_path),
            resolution=32,
            lora_rank=4,
            lora_alpha=8,
            generator_checkpoint=str(ckpt),
            lora_target_modules=[
                "to_q",
                "to_k",
                "to_v",
                "to_out.0",
                "add_q_proj",
                "add_k_proj",
                "add_v_proj",
                "to_add_out",
            ],
        ).build([GENERATOR])
    # the authors' adapters are rank 32 with alpha 64: 2 x rank, which the configuration must match
    with pytest.raises(LoraCheckpointError, match="lora_alpha 8 but lora_alpha is 4"):
        SD3Backbone(str(tiny_sd35_path), resolution=32, lora_rank=4, lora_alpha=4, generator_checkpoint=str(ckpt))


def test_peft_adapter_folder_states_its_alpha(tmp_path, tiny_sd35_path, authors_model):
    model, _ = authors_model
    model.save_pretrained(str(tmp_path / "lora"), selected_adapters=["tdm"])
    folder = next(p.parent for p in (tmp_path / "lora").rglob("adapter_config.json"))
    ours = SD3Backbone(
        str(tiny_sd35_path),
        resolution=32,
        lora_rank=4,
        lora_alpha=8,
        max_sequence_length=32,
        generator_checkpoint=str(folder),
    )
    ours.build([GENERATOR])
    x, c = _inputs(ours)
    with torch.no_grad():
        assert torch.allclose(ours.velocity(GENERATOR, x, 0.5, c), _transformer_velocity(model, x, 0.5, c), atol=1e-5)
    with pytest.raises(LoraCheckpointError, match=r"\(PEFT\) was trained with lora_alpha 8 but lora_alpha is 16"):
        SD3Backbone(str(tiny_sd35_path), resolution=32, lora_rank=4, lora_alpha=16, generator_checkpoint=str(folder))


def test_lora_of_another_model_family_is_refused_before_models_load(tmp_path, tiny_sd3_path, monkeypatch):
    monkeypatch.setattr(SD3Backbone, "build", lambda *a: pytest.fail("models were loaded"))
    unet = tmp_path / "sdxl_lora.safetensors"
    save_file(
        {
            "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 8),
            "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.zeros(8, 4),
        },
        str(unet),
    )
    with pytest.raises(
        LoraCheckpointError, match=r"first unmatched key: 'unet.down_blocks.0.attentions.0.*another model family"
    ):
        SD3Backbone(str(tiny_sd3_path), lora_rank=4, lora_alpha=4, generator_checkpoint=str(unet))
    flux = tmp_path / "flux_lora.safetensors"
    save_file(
        {
            "transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 8),
            "transformer.single_transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(8, 4),
        },
        str(flux),
    )
    with pytest.raises(LoraCheckpointError, match="first unmatched key: 'single_transformer_blocks.0"):
        SD3Backbone(str(tiny_sd3_path), lora_rank=4, lora_alpha=4, generator_checkpoint=str(flux))
    odd = tmp_path / "odd.ckpt"
    torch.save({"decay": 0.9, "ema_parameters": [torch.zeros(4, 8)]}, odd)
    with pytest.raises(LoraCheckpointError, match="pairs of 2-D tensors"):
        SD3Backbone(str(tiny_sd3_path), lora_rank=4, lora_alpha=8, generator_checkpoint=str(odd))
