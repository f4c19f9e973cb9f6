"""Two CPU processes with DDP: roles stay identical across processes after training (gradients averaged)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

from tdmr1_lightning.backbones.base import GENERATOR_EMA, TEACHER
from tdmr1_lightning.backbones.lora_files import read_lora_file
from tdmr1_lightning.cli import main

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


SAVE_CALLBACK = """
import torch, lightning as L
from torch.distributed.tensor import DTensor
from tdmr1_lightning.backbones.base import FAKE, GENERATOR, GENERATOR_EMA, SURROGATE, SURROGATE_OLD, TEACHER

def _full(p):
    p = p.detach()
    return p.full_tensor() if isinstance(p, DTensor) else p  # gathering a shard is a collective

class SaveRoles(L.Callback):
    def __init__(self, path: str):
        self.path = path

    def _roles(self, module):
        roles = module.backbone.roles
        return {r: torch.cat([_full(p).flatten() for p in roles.parameters_of(r)])
                for r in (GENERATOR, FAKE, SURROGATE, GENERATOR_EMA, SURROGATE_OLD, TEACHER)}

    def on_fit_start(self, trainer, module):
        self.start = self._roles(module)

    def on_train_end(self, trainer, module):
        end = self._roles(module)  # on every process
        if trainer.is_global_zero:
            torch.save({"start": self.start, "end": end, "world_size": trainer.world_size,
                        "strategy": type(trainer.strategy).__name__}, self.path)
"""


def _fit_command(root: Path, tiny_sd3_path: Path, quiet_trainer: tuple[str, ...], out: Path, *extra: str) -> list[str]:
    """A 2-update tiny run (two groups of 4) that saves every role before and after training to ``out``."""
    return [
        sys.executable,
        "-m",
        "tdmr1_lightning",
        "fit",
        "--config",
        "configs/tiny.yaml",
        f"--model.backbone.init_args.directory={tiny_sd3_path}",
        f"--trainer.default_root_dir={root}",
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


def _env(folder: Path, **extra: str) -> dict[str, str]:
    (folder / "save_callback.py").write_text(SAVE_CALLBACK)
    return {**os.environ, "PYTHONPATH": f"{folder}{os.pathsep}{ROOT}", "HF_HUB_OFFLINE": "1", **extra}


@pytest.mark.slow
def test_ddp_two_processes_keep_roles_in_sync(tmp_path, tiny_sd3_path, quiet_trainer):
    (tmp_path / "sync_callback.py").write_text(CALLBACK)
    report = tmp_path / "report.json"
    cmd = _fit_command(
        tmp_path,
        tiny_sd3_path,
        quiet_trainer,
        tmp_path / "roles.pt",
        "--trainer.strategy=ddp",
        "--trainer.devices=2",
        "--model.batching.micro_batch_size=4",
        "--trainer.callbacks+=sync_callback.ReportSync",
        f"--trainer.callbacks.path={report}",
    )
    done = subprocess.run(cmd, cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(report.read_text())
    assert result["world_size"] == 2 and result["global_step"] == 2
    assert result["max_diff"] == 0.0


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, tiny_sd3_path, quiet_trainer) -> dict:
    """The roles of one process holding both groups (micro-batches of 4), before and after 2 updates."""
    folder = tmp_path_factory.mktemp("one_process")
    out = folder / "one.pt"
    cmd = _fit_command(
        folder, tiny_sd3_path, quiet_trainer, out, "--trainer.devices=1", "--model.batching.micro_batch_size=4"
    )
    done = subprocess.run(cmd, cwd=ROOT, env=_env(folder), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(out)


def _assert_same_training(run: dict, one: dict) -> None:
    assert torch.equal(run["end"][TEACHER], one["start"][TEACHER])  # the frozen base did not move
    for role, value in one["end"].items():
        if role == TEACHER:
            continue
        assert not torch.equal(value, one["start"][role]), role  # every role trained
        assert torch.equal(run["start"][role], one["start"][role]), role
        # float sums in another order (the gradient average over processes) are the only difference
        error = float((run["end"][role] - value).norm() / (value - one["start"][role]).norm())
        assert error <= 1e-4, (role, error)


SPLIT = ("--trainer.devices=2", "--data.processes_per_group=2", "--model.batching.micro_batch_size=2")
CHECKPOINT_EVERY_UPDATE = (
    "--trainer.enable_checkpointing=true",
    "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
    "--trainer.callbacks.every_n_train_steps=1",
    "--trainer.callbacks.save_top_k=-1",
    "--trainer.callbacks.save_last=true",
)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_a_group_split_across_two_processes_trains_as_one_process_holding_it(
    strategy, tmp_path, tiny_sd3_path, quiet_trainer, one_process
):
    # Section 8.5: two groups of 4, each shared by both processes (2 samples each, micro-batches of 2), against
    # one process holding both groups (micro-batches of 4): the same global micro-batches, the same noise
    # (keyed by sample and group), group means, std and S_g reduced across the processes. Under FSDP2 every
    # denoiser block (base and adapters) is sharded over both processes and FSDP2 averages the gradients;
    # its run then resumes from its sharded checkpoint of update 1 and must end where it ended, and so must a run
    # with activation checkpointing.
    def fit(name: str, *extra: str) -> dict:
        out = tmp_path / f"{name}.pt"
        cmd = _fit_command(tmp_path / name, tiny_sd3_path, quiet_trainer, out, f"--trainer.strategy={strategy}", *SPLIT)
        done = subprocess.run([*cmd, *extra], cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return torch.load(out)

    split = fit("split", *(CHECKPOINT_EVERY_UPDATE if strategy == "fsdp2" else ()))
    assert split["world_size"] == 2 and split["strategy"] == {"ddp": "DDPStrategy", "fsdp2": "FSDP2Strategy"}[strategy]
    _assert_same_training(split, one_process)
    if strategy == "fsdp2":
        (first,) = (tmp_path / "split").rglob("*step=1.ckpt")
        assert first.is_dir() and len(list(first.glob("*.distcp"))) == 2  # one shard a process
        saved = set(dcp.FileSystemReader(str(first)).read_metadata().state_dict_metadata)
        weights = [k for k in saved if k.startswith("state_dict.")]
        assert weights and all(".lora_" in k for k in weights)  # the trained roles only, not the frozen base
        # one file from the shards: every role's full tensors, as the run ended (and readable as a LoRA)
        (last,) = (tmp_path / "split").rglob("last.ckpt")
        assert main(["consolidate", str(last), str(tmp_path / "whole.ckpt")]) == 0
        whole = torch.load(tmp_path / "whole.ckpt", weights_only=True)
        assert whole["global_step"] == 2
        for role, value in split["end"].items():
            keys = sorted(k for k in whole["state_dict"] if f".lora_A.{role}." in k or f".lora_B.{role}." in k)
            if role != TEACHER:
                assert torch.equal(torch.cat([whole["state_dict"][k].flatten() for k in keys]), value), role
        assert read_lora_file(tmp_path / "whole.ckpt", GENERATOR_EMA).rank == 4
        assert read_lora_file(last, GENERATOR_EMA).rank == 4  # the folder itself reads too
        resumed = fit("resumed", f"--ckpt_path={first}")
        # activation checkpointing per block, recomputed as the role that ran each forward, changes nothing
        checkpointed = fit("checkpointed", "--model.backbone.init_args.gradient_checkpointing=true")
        # another world size: the format re-shards on load, and the prompts and noise do not depend on it
        alone = fit(
            "alone",
            f"--ckpt_path={first}",
            "--trainer.devices=1",
            "--data.processes_per_group=1",
            "--model.batching.micro_batch_size=4",
        )
        for role, value in split["end"].items():
            assert torch.equal(resumed["end"][role], value), role
            assert torch.equal(checkpointed["end"][role], value), role
            if role == TEACHER:
                assert torch.equal(alone["end"][role], value)
                continue
            error = float((alone["end"][role] - value).norm() / (value - split["start"][role]).norm())
            assert error <= 1e-4, (role, error)


@pytest.mark.slow
def test_two_nodes_of_one_process_train_as_one_process(tmp_path, tiny_sd3_path, quiet_trainer, one_process):
    """``--trainer.num_nodes 2`` under FSDP2, each "node" started by its own launcher (``NODE_RANK``)."""
    out = tmp_path / "nodes.pt"
    cmd = _fit_command(
        tmp_path,
        tiny_sd3_path,
        quiet_trainer,
        out,
        "--trainer.strategy=fsdp2",
        "--trainer.num_nodes=2",
        "--trainer.devices=1",
        "--data.processes_per_group=2",
        "--model.batching.micro_batch_size=2",
    )
    port = str(29500 + os.getpid() % 1000)
    nodes = [
        subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=_env(tmp_path, MASTER_ADDR="127.0.0.1", MASTER_PORT=port, NODE_RANK=str(rank)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    errors = [node.communicate(timeout=600)[1] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(e[-2000:] for e in errors)
    run = torch.load(out)
    assert run["world_size"] == 2 and run["strategy"] == "FSDP2Strategy"
    _assert_same_training(run, one_process)
