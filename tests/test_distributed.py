"""Two CPU processes with DDP: roles stay identical across processes after training (gradients averaged)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

CALLBACK = """
import json, torch, lightning as L
from tdmr1_lightning.backbones.base import FAKE, GENERATOR, SURROGATE

class ReportSync(L.Callback):
    def __init__(self, path: str):
        self.path = path

    def on_train_end(self, trainer, module):
        roles = module.backbone.roles
        flat = torch.cat([p.detach().flatten() for r in (GENERATOR, FAKE, SURROGATE) for p in roles.parameters_of(r)])
        gathered = trainer.strategy.all_gather(flat)
        if trainer.is_global_zero:
            json.dump({"max_diff": float((gathered[0] - gathered[1]).abs().max()),
                       "moved": float(flat.abs().sum()), "global_step": trainer.global_step,
                       "world_size": trainer.world_size}, open(self.path, "w"))
"""


@pytest.mark.slow
def test_ddp_two_processes_keep_roles_in_sync(tmp_path, tiny_sd3_path, quiet_trainer):
    (tmp_path / "sync_callback.py").write_text(CALLBACK)
    report = tmp_path / "report.json"
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "tdmr1_lightning",
        "fit",
        "--config",
        "configs/tiny.yaml",
        f"--model.backbone.init_args.directory={tiny_sd3_path}",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.strategy=ddp",
        "--trainer.devices=2",
        "--trainer.accelerator=cpu",
        "--trainer.max_steps=2",
        *quiet_trainer,
        "--trainer.logger=false",
        "--trainer.enable_checkpointing=false",
        "--trainer.callbacks=[]",
        "--trainer.callbacks+=sync_callback.ReportSync",
        f"--trainer.callbacks.path={report}",
    ]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(report.read_text())
    assert result["world_size"] == 2 and result["global_step"] == 2
    assert result["max_diff"] == 0.0


SAVE_CALLBACK = """
import torch, lightning as L
from tdmr1_lightning.backbones.base import FAKE, GENERATOR, GENERATOR_EMA, SURROGATE, SURROGATE_OLD

class SaveRoles(L.Callback):
    def __init__(self, path: str):
        self.path = path

    def _roles(self, module):
        roles = module.backbone.roles
        return {r: torch.cat([p.detach().flatten() for p in roles.parameters_of(r)])
                for r in (GENERATOR, FAKE, SURROGATE, GENERATOR_EMA, SURROGATE_OLD)}

    def on_fit_start(self, trainer, module):
        self.start = self._roles(module)

    def on_train_end(self, trainer, module):
        if trainer.is_global_zero:
            torch.save({"start": self.start, "end": self._roles(module)}, self.path)
"""


@pytest.mark.slow
def test_a_group_split_across_two_processes_trains_as_one_process_holding_it(tmp_path, tiny_sd3_path, quiet_trainer):
    # Section 8.5: two groups of 4, each shared by both processes (2 samples each, micro-batches of 2), against
    # one process holding both groups (micro-batches of 4): the same global micro-batches, the same noise
    # (keyed by sample and group), group means, std and S_g reduced across the processes.
    (tmp_path / "save_callback.py").write_text(SAVE_CALLBACK)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", "HF_HUB_OFFLINE": "1"}

    def fit(name: str, *extra: str) -> dict:
        out = tmp_path / f"{name}.pt"
        cmd = [
            sys.executable,
            "-m",
            "tdmr1_lightning",
            "fit",
            "--config",
            "configs/tiny.yaml",
            f"--model.backbone.init_args.directory={tiny_sd3_path}",
            f"--trainer.default_root_dir={tmp_path / name}",
            "--trainer.accelerator=cpu",
            "--trainer.max_steps=2",
            *quiet_trainer,
            "--trainer.logger=false",
            "--trainer.enable_checkpointing=false",
            "--trainer.callbacks=[]",
            "--trainer.callbacks+=save_callback.SaveRoles",
            f"--trainer.callbacks.path={out}",
            "--data.prompts_per_step=2",
            "--data.group_size=4",
            *extra,
        ]
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return torch.load(out)

    one = fit("one", "--trainer.devices=1", "--model.batching.micro_batch_size=4")
    split = fit(
        "split",
        "--trainer.strategy=ddp",
        "--trainer.devices=2",
        "--data.processes_per_group=2",
        "--model.batching.micro_batch_size=2",
    )
    for role, value in one["end"].items():
        assert not torch.equal(value, one["start"][role]), role  # every role trained
        assert torch.equal(split["start"][role], one["start"][role]), role
        # float sums in another order (the gradient average over processes) are the only difference
        error = float((split["end"][role] - value).norm() / (value - one["start"][role]).norm())
        assert error <= 1e-4, (role, error)
