"""Two CPU processes with DDP: roles stay identical across processes after training (gradients averaged)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CALLBACK = '''
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
'''


@pytest.mark.slow
def test_ddp_two_processes_keep_roles_in_sync(tmp_path, tiny_sd3_path):
    (tmp_path / "sync_callback.py").write_text(CALLBACK)
    report = tmp_path / "report.json"
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable, "-m", "tdmr1_lightning", "fit", "--config", "configs/tiny.yaml",
        f"--model.backbone.init_args.directory={tiny_sd3_path}", f"--trainer.default_root_dir={tmp_path}",
        "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu", "--trainer.max_steps=2",
        "--trainer.limit_val_batches=0", "--trainer.enable_progress_bar=false", "--trainer.logger=false",
        "--trainer.enable_checkpointing=false", "--trainer.callbacks=[]",
        "--trainer.callbacks+=sync_callback.ReportSync", f"--trainer.callbacks.path={report}",
    ]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(report.read_text())
    assert result["world_size"] == 2 and result["global_step"] == 2
    assert result["max_diff"] == 0.0
