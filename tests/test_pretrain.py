"""Flow-matching pretraining of a teacher: it fits data, checkpoints the transformer, exports a pipeline."""

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from tdmr1_lightning.backbones import PixelSD3Backbone
from tdmr1_lightning.backbones.base import TEACHER
from tdmr1_lightning.pretrain import FlowMatchingModule
from tdmr1_lightning.tiny import build_tiny_sd3


def _batches(n_batches: int):
    """Two fixed prompts, each with its own flat colour image."""
    red = torch.zeros(3, 16, 16, dtype=torch.uint8)
    red[0] = 255
    blue = torch.zeros(3, 16, 16, dtype=torch.uint8)
    blue[2] = 255
    batch = {"images": torch.stack([red, blue] * 4), "prompts": ["red", "blue"] * 4}
    return [batch] * n_batches


@pytest.mark.slow
def test_flow_matching_learns_and_exports(tmp_path):
    torch.manual_seed(0)
    path = build_tiny_sd3(tmp_path / "pixel", resolution=16, pixel_space=True)
    module = FlowMatchingModule(
        PixelSD3Backbone(str(path), resolution=16, max_sequence_length=8),
        optimizer=lambda p: torch.optim.AdamW(p, lr=3e-3),
        null_prompt_probability=0.0,
        log_images_every_n_steps=0,
        export_dir=str(tmp_path / "teacher"),
    )
    losses = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, *args):
            losses.append(float(outputs["loss"]))

    trainer = L.Trainer(
        max_steps=60,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[Record()],
    )
    trainer.fit(module, DataLoader(_batches(60), batch_size=None))
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10

    # samples follow the prompt: red images for "red", blue for "blue"
    images = module.sample(["red", "blue"], steps=10, guidance_scale=1.0).float()
    assert images[0, 0].mean() > images[0, 2].mean() and images[1, 2].mean() > images[1, 0].mean()

    # the checkpoint holds the transformer only; the export loads with the pixel backbone
    ckpt = next(tmp_path.rglob("*.ckpt"))
    keys = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"].keys()
    assert keys and all(k.startswith("backbone.roles.base.") for k in keys)
    exported = PixelSD3Backbone(str(tmp_path / "teacher"), resolution=16, max_sequence_length=8)
    exported.build([])
    x = torch.randn(2, 3, 16, 16)
    c = exported.encode_prompts(["red", "blue"])
    with torch.no_grad():
        assert torch.allclose(
            exported.velocity(TEACHER, x, 0.5, c),
            module.backbone.velocity(TEACHER, x, 0.5, module.backbone.encode_prompts(["red", "blue"])),
            atol=1e-5,
        )


@pytest.mark.slow
def test_export_from_a_checkpoint(tmp_path, quiet_trainer, monkeypatch):
    from pathlib import Path

    from tdmr1_lightning.cli import build_cli
    from tdmr1_lightning.pretrain import export_checkpoint

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)
    overrides = [
        f"--model.init_args.backbone.init_args.directory={tmp_path / 'init'}",
        "--model.init_args.backbone.init_args.num_layers=1",
    ]
    cli = build_cli(
        [
            "--config",
            "configs/shapes/teacher.yaml",
            *overrides,
            "--data.init_args.batch_size=4",
            "--trainer.max_steps=2",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.logger=false",
            *quiet_trainer,
            "--model.init_args.export_dir=null",
        ],
        run=False,
    )
    cli.trainer.fit(cli.model, cli.datamodule)
    ckpt = next(tmp_path.rglob("last.ckpt"))
    out = export_checkpoint("configs/shapes/teacher.yaml", str(ckpt), str(tmp_path / "exported"), overrides)
    exported = PixelSD3Backbone(str(out), resolution=32, max_sequence_length=16)
    exported.build([])
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    for name, param in exported.roles.base.named_parameters():
        assert torch.equal(param, saved[f"backbone.roles.base.{name}"]), name
    with torch.no_grad():
        x = torch.randn(2, 3, 32, 32)
        c = exported.encode_prompts(["a photo of a red circle", ""])
        assert torch.isfinite(exported.velocity(TEACHER, x, 0.5, c)).all()


@pytest.mark.slow
def test_training_resumes_from_a_checkpoint(tmp_path):
    """``--ckpt_path`` resumes a run (EMA as in the shipped teacher config) from a transformer-only checkpoint."""
    import pytest
    from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint

    path = build_tiny_sd3(tmp_path / "pixel", resolution=16, pixel_space=True)

    def run(max_steps, ckpt_path=None):
        torch.manual_seed(0)
        module = FlowMatchingModule(
            PixelSD3Backbone(str(path), resolution=16, max_sequence_length=8),
            optimizer=lambda p: torch.optim.AdamW(p, lr=3e-3),
            null_prompt_probability=0.0,
            log_images_every_n_steps=0,
        )
        trainer = L.Trainer(
            max_steps=max_steps,
            accelerator="cpu",
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp_path,
            callbacks=[EMAWeightAveraging(decay=0.9), ModelCheckpoint(tmp_path / "ckpt", save_last=True)],
        )
        trainer.fit(module, DataLoader(_batches(max_steps), batch_size=None), ckpt_path=ckpt_path)
        return trainer, module

    _, first = run(4)
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=False)
    before = {k: v.clone() for k, v in first.backbone.roles.base.state_dict().items()}
    # resumed at its end: the current weights and the EMA (the checkpoint's state_dict) are the saved ones
    trainer, ended = run(4, tmp_path / "ckpt" / "last.ckpt")
    ema = next(c for c in trainer.callbacks if isinstance(c, EMAWeightAveraging))._average_model.module
    assert any(not torch.equal(v, saved["current_model_state"][k]) for k, v in saved["state_dict"].items())
    for k, v in saved["state_dict"].items():
        assert torch.equal(ended.state_dict()[k], saved["current_model_state"][k]) and torch.equal(
            ema.state_dict()[k], v
        )
    trainer, resumed = run(8, tmp_path / "ckpt" / "last.ckpt")
    assert trainer.global_step == 8
    after = resumed.backbone.roles.base.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it trained on, from the saved state

    # a checkpoint that lost a transformer weight still fails to resume
    key = next(k for k in saved["state_dict"] if k.startswith("backbone.roles.base."))
    del saved["state_dict"][key]
    torch.save(saved, tmp_path / "broken.ckpt")
    with pytest.raises(RuntimeError, match="Missing key"):
        run(8, tmp_path / "broken.ckpt")
