"""``FlowMatchingModule``: train a backbone's denoiser by rectified flow matching (a teacher from scratch).

TDM-R1 needs a many-step teacher. For real models that is SD3.5; for the project's embedded
synthetic world it is a tiny SD3-architecture model trained here on rendered scenes. The loss is the
standard rectified-flow objective ``|| v(x_s, s, c) - (eps - x0) ||^2`` with ``x_s = (1 - s) x0 + s eps``;
prompts are dropped to the empty prompt with some probability so that classifier-free guidance works.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor

from .backbones.base import TEACHER, RectifiedFlowBackbone
from .data import keyed_generator, run_seed
from .image_logging import image_logger_ready, log_image_grid
from .sampler import sample
from .schedule import step_boundaries, time_shift

_TRAINED = "backbone.roles.base."  # the state a pretraining checkpoint holds


def _adamw(params):
    return torch.optim.AdamW(params, lr=6e-4, betas=(0.9, 0.99), weight_decay=0.0)


class FlowMatchingModule(L.LightningModule):
    """Pretrain the backbone's base transformer (the future teacher) by rectified flow matching.

    Batches are ``{"images": uint8 (N, 3, H, W), "prompts": [str]}``.

    Args:
        backbone: The model; its base transformer is trained from its current weights.
        optimizer: Optimizer of the transformer's parameters.
        shift: Time shift of the training levels ``s = S(u)``, ``u ~ U[0, 1]`` (1 = uniform).
        null_prompt_probability: Probability of replacing a prompt by the empty prompt (for guidance).
        sample_steps: Euler steps of the samples logged at validation.
        guidance_scale: Classifier-free guidance of those samples.
        log_images_every_n_steps: Log a grid of samples every this many steps (0: never).
        export_dir: Where to write the trained pipeline (a ``from_pretrained`` folder) at the end of training.
        noise_seed: Seed of the training draws (prompt dropout, levels, noise), drawn afresh from
            ``(noise_seed, process, step)`` at every step so that a resumed run draws what the
            uninterrupted one would; ``None``: the run's global seed (``seed_everything``).
    """

    def __init__(
        self,
        backbone: RectifiedFlowBackbone,
        optimizer: OptimizerCallable = _adamw,
        shift: float = 1.0,
        null_prompt_probability: float = 0.1,
        sample_steps: int = 50,
        guidance_scale: float = 4.5,
        log_images_every_n_steps: int = 500,
        export_dir: str | None = None,
        noise_seed: int | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= null_prompt_probability < 1.0:
            raise ValueError(f"null_prompt_probability must be in [0, 1), got {null_prompt_probability}")
        self.save_hyperparameters(ignore=["backbone", "optimizer"])
        self.hparams.noise_seed = run_seed(noise_seed)  # recorded resolved, so resuming repeats it
        self.backbone = backbone
        self.optimizer = optimizer
        self._built = False

    def configure_model(self) -> None:
        if self._built:
            return
        self.backbone.build([])
        self.backbone.roles.base.requires_grad_(True).train()
        self._built = True

    def configure_optimizers(self):
        return self.optimizer([p for p in self.backbone.roles.base.parameters() if p.requires_grad])

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Only the trained transformer: text encoders (and a VAE) are frozen and come from the pipeline folder.
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k.startswith(_TRAINED)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Resuming (``--ckpt_path``) loads strictly: the frozen parts the checkpoint left out are this
        # module's own (from the pipeline folder), while a missing transformer weight still fails.
        state = checkpoint["state_dict"]
        for k, v in self.state_dict().items():
            if not k.startswith(_TRAINED):
                state.setdefault(k, v)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        hp = self.hparams
        x0 = self.backbone.encode_images(batch["images"].to(self.device))
        n, rank = x0.shape[0], self.global_rank if self._trainer is not None else 0
        draws = keyed_generator(hp.noise_seed, rank, self.global_step, device=self.device)
        dropped = (torch.rand(n, generator=draws, device=self.device) < hp.null_prompt_probability).tolist()
        cond = self.backbone.encode_prompts(["" if d else p for d, p in zip(dropped, batch["prompts"])])
        s = time_shift(torch.rand(n, generator=draws, device=self.device), hp.shift)
        eps = torch.randn(x0.shape, generator=draws, device=self.device, dtype=x0.dtype)
        x_s = (1 - s.view(-1, 1, 1, 1)) * x0 + s.view(-1, 1, 1, 1) * eps
        v = self.backbone.velocity(TEACHER, x_s, s, cond)
        loss = torch.nn.functional.mse_loss(v.float(), (eps - x0).float())
        self.log("train/loss", loss, prog_bar=True, on_step=True, batch_size=x0.shape[0])
        if hp.log_images_every_n_steps and self.global_step % hp.log_images_every_n_steps == 0 and self.global_step > 0:
            self._log_samples(batch["prompts"][:16])
        return loss

    @torch.no_grad()
    def sample(
        self, prompts: list[str], steps: int | None = None, guidance_scale: float | None = None, seed: int = 0
    ) -> Tensor:
        """``uint8`` images of ``prompts`` by Euler sampling with classifier-free guidance."""
        hp, bb = self.hparams, self.backbone
        steps = steps or hp.sample_steps
        scale = hp.guidance_scale if guidance_scale is None else guidance_scale
        cond = bb.encode_prompts(prompts)
        noise = torch.randn(
            (len(prompts), *bb.latent_shape),
            generator=torch.Generator(self.device).manual_seed(seed),
            device=self.device,
        )
        x = sample(lambda x, s: bb.guided_velocity(TEACHER, x, s, cond, scale), noise, step_boundaries(steps, 3.0))
        return bb.decode(x)

    def _log_samples(self, prompts: list[str]) -> None:
        if not image_logger_ready(self):
            return
        was_training = self.backbone.roles.base.training
        self.backbone.roles.base.eval()
        log_image_grid(self, "pretrain/samples", self.sample(prompts))
        self.backbone.roles.base.train(was_training)

    def on_train_end(self) -> None:
        if self.hparams.export_dir and self.trainer.is_global_zero:
            export_pipeline(self.backbone, self.hparams.export_dir)


def export_pipeline(backbone: RectifiedFlowBackbone, directory: str | Path) -> Path:
    """Write the backbone's pipeline with its current base transformer into ``directory`` (from_pretrained-ready).

    Components other than the transformer are copied from the folder the backbone was loaded from.
    """
    directory = Path(directory)
    source = Path(backbone.pretrained_model)
    tmp = directory.with_name(f".{directory.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp, ignore=shutil.ignore_patterns("transformer"))
    backbone.roles.base.save_pretrained(tmp / "transformer", safe_serialization=True)
    if directory.exists():
        shutil.rmtree(directory)
    tmp.rename(directory)
    return directory


def export_checkpoint(config: str, checkpoint: str, out: str, overrides: list[str] | None = None) -> Path:
    """Build the module of a pretraining ``config``, load ``checkpoint`` and export its pipeline to ``out``.

    With Lightning's ``EMAWeightAveraging`` callback the checkpoint's weights are the EMA's.
    """
    from .cli import build_cli

    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    module = build_cli(["--config", config, *(overrides or []), "--trainer.logger=false"], run=False).model
    if not isinstance(module, FlowMatchingModule):
        raise ValueError(f"{config} does not configure a FlowMatchingModule (model.class_path)")
    module.configure_model()
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    missing = set(k for k in module.state_dict() if k.startswith(_TRAINED)) - set(state)
    if missing:
        raise ValueError(
            f"checkpoint {checkpoint} lacks {len(missing)} transformer weights, e.g. {sorted(missing)[:3]}"
        )
    module.load_state_dict(state, strict=False)
    return export_pipeline(module.backbone, out)


def main(argv: list[str] | None = None) -> int:
    """``tdmr1 pretrain export``: a pretraining checkpoint to a pipeline folder."""
    import argparse

    parser = argparse.ArgumentParser(prog="tdmr1 pretrain", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export", help="write a from_pretrained pipeline folder from a checkpoint")
    export.add_argument("--config", required=True, help="the pretraining config (e.g. configs/shapes/teacher.yaml)")
    export.add_argument("--ckpt", required=True, help="a checkpoint of that run")
    export.add_argument("--out", required=True, help="the pipeline folder to write")
    export.add_argument(
        "overrides", nargs="*", help="extra config arguments, e.g. --model.init_args.backbone.init_args.directory=DIR"
    )
    args = parser.parse_args(argv)
    print(export_checkpoint(args.config, args.ckpt, args.out, args.overrides))
    return 0
