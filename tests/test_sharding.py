"""FSDP2 (``--trainer.strategy fsdp2``): the strategy's name, its sampler, and the errors before weights load.

Training under it (2 CPU processes and two one-process nodes against one process, sharded checkpoints,
resume) is in tests/test_distributed.py.
"""

from __future__ import annotations

import lightning as L
import pytest

from tdmr1_lightning.module import TDMR1Module
from tdmr1_lightning.sharding import FSDP2Strategy, is_sharded


def test_fsdp2_is_a_strategy_name():
    trainer = L.Trainer(strategy="fsdp2", accelerator="cpu", devices=1, logger=False)
    assert isinstance(trainer.strategy, FSDP2Strategy) and is_sharded(trainer)
    assert not is_sharded(L.Trainer(accelerator="cpu", devices=1, logger=False)) and not is_sharded(None)


def test_a_family_that_does_not_name_its_blocks_is_refused_before_weights_load():
    from test_wiring import AnalyticBackbone

    backbone = AnalyticBackbone()
    assert not backbone.shards_blocks
    module = TDMR1Module(backbone)
    module.trainer = L.Trainer(strategy="fsdp2", accelerator="cpu", devices=1, logger=False)
    with pytest.raises(
        ValueError, match=r"FSDP2Strategy \(FSDP2\) shards a denoiser block by block, and AnalyticBackbone"
    ):
        module.setup("fit")


def test_the_sd3_families_name_their_blocks(tiny_sd3_path):
    from tdmr1_lightning.backbones.tiny_sd3 import TinySD3Backbone

    backbone = TinySD3Backbone(directory=str(tiny_sd3_path))
    backbone.build(["generator"])
    blocks = backbone.denoiser_blocks(backbone.roles.base)
    assert backbone.shards_blocks and len(blocks) == backbone.roles.base.config.num_layers
    assert all(type(b).__name__ == "JointTransformerBlock" for b in blocks)


def test_a_multi_node_run_without_its_rendezvous_is_refused():
    from tdmr1_lightning.sharding import check_launch_environment

    check_launch_environment(1, {})
    check_launch_environment(2, {"SLURM_NTASKS": "16"})
    check_launch_environment(2, {"TORCHELASTIC_RUN_ID": "x"})
    check_launch_environment(2, {"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500", "NODE_RANK": "1"})
    with pytest.raises(ValueError, match=r"--trainer.num_nodes=2: set MASTER_ADDR, NODE_RANK on every node"):
        check_launch_environment(2, {"MASTER_PORT": "29500"})


def test_the_cli_checks_the_launch_environment_before_models_load(tmp_path, monkeypatch):
    from tdmr1_lightning.cli import build_cli

    for name in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "SLURM_NTASKS", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="num_nodes=2: set MASTER_ADDR, MASTER_PORT, NODE_RANK"):
        build_cli(
            ["--config", "configs/tiny.yaml", "--trainer.num_nodes=2", f"--trainer.default_root_dir={tmp_path}"],
            run=False,
        )


def test_consolidate_refuses_what_it_cannot_write(tmp_path, capsys):
    from tdmr1_lightning.cli import main

    with pytest.raises(SystemExit):
        main(["consolidate", str(tmp_path), str(tmp_path / "out.ckpt")])
    assert "not a sharded checkpoint folder" in capsys.readouterr().err
    (tmp_path / ".metadata").write_bytes(b"")
    (tmp_path / "out.ckpt").write_bytes(b"keep")
    with pytest.raises(SystemExit):
        main(["consolidate", str(tmp_path), str(tmp_path / "out.ckpt")])
    assert "exists" in capsys.readouterr().err and (tmp_path / "out.ckpt").read_bytes() == b"keep"
