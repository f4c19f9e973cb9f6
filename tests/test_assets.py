"""Shipped assets: the manifest's rebuild message, and the pipeline / LoRA shipping tools."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tdmr1_lightning.assets import MANIFEST, MissingAssetError, check_asset, main, ship_lora, ship_pipeline

REPO = Path(__file__).resolve().parents[1]


def _manifest(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).write_text(
        json.dumps(
            {
                "teacher": {"description": "a teacher", "rebuild": ["tdmr1 fit --config teacher.yaml", "ship it"]},
                "student.safetensors": {"description": "a student", "rebuild": ["tdmr1 fit --config tdm.yaml"]},
            }
        )
    )


def test_missing_listed_asset_names_the_rebuild_commands(tmp_path: Path) -> None:
    _manifest(tmp_path / "assets")
    with pytest.raises(
        MissingAssetError, match=r"(?s)pretrained_model: .*teacher is missing.*tdmr1 fit --config teacher.yaml.*ship it"
    ):
        check_asset(tmp_path / "assets" / "teacher", "pretrained_model")
    with pytest.raises(MissingAssetError, match="tdm.yaml"):
        check_asset(tmp_path / "assets" / "student.safetensors", "generator_checkpoint")
    # not listed, or present: returned unchanged for the caller's own checks
    assert check_asset(tmp_path / "assets" / "other.bin", "x") == tmp_path / "assets" / "other.bin"
    assert check_asset(tmp_path / "assets", "x") == tmp_path / "assets"


def test_backbone_and_lora_loaders_raise_the_asset_error(tmp_path: Path) -> None:
    from tdmr1_lightning.backbones.hub import resolve_pretrained
    from tdmr1_lightning.backbones.lora_files import read_lora_file

    _manifest(tmp_path / "assets")
    with pytest.raises(MissingAssetError, match="ship it"):
        resolve_pretrained(str(tmp_path / "assets" / "teacher"))
    with pytest.raises(MissingAssetError, match="tdm.yaml"):
        read_lora_file(tmp_path / "assets" / "student.safetensors")


def test_repository_manifest_lists_the_shipped_shapes_models() -> None:
    folder = REPO / "tdmr1_lightning" / "shapes" / "assets"
    entries = json.loads((folder / MANIFEST).read_text())
    assert set(entries) == {"teacher", "tdm_student.safetensors", "tdm_fake.safetensors"}
    for key, entry in entries.items():
        assert (folder / key).exists(), f"shipped asset {key} is missing"
        assert entry["rebuild"] and all(isinstance(c, str) for c in entry["rebuild"])
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    assert size < 12 * 2**20, f"shipped shapes assets take {size / 2**20:.1f} MiB"


def test_ship_pipeline_casts_weights_and_loads_back(tiny_sd3_path: Path, tmp_path: Path) -> None:
    from diffusers import SD3Transformer2DModel
    from safetensors import safe_open

    out = ship_pipeline(tiny_sd3_path, tmp_path / "shipped", "float16")
    for file in out.rglob("*.safetensors"):
        with safe_open(str(file), "pt") as f:
            assert all(f.get_tensor(k).dtype == torch.float16 for k in f.keys() if f.get_tensor(k).is_floating_point())
    assert not any("_name_or_path" in json.loads(c.read_text()) for c in out.rglob("*config.json"))  # no build paths
    ref = SD3Transformer2DModel.from_pretrained(str(tiny_sd3_path), subfolder="transformer")
    got = SD3Transformer2DModel.from_pretrained(str(out), subfolder="transformer", torch_dtype=torch.float32)
    for (name, a), (_, b) in zip(ref.state_dict().items(), got.state_dict().items()):
        assert b.dtype == torch.float32
        torch.testing.assert_close(b, a.half().float(), msg=name)
    # shipping again replaces the folder whole
    ship_pipeline(tiny_sd3_path, out, "float32")
    assert not list(tmp_path.glob(".shipped.*"))


def test_ship_lora_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from safetensors.torch import load_file, save_file

    lora = {
        "transformer_blocks.0.attn.to_q.lora_A.weight": torch.randn(4, 8),
        "transformer_blocks.0.attn.to_q.lora_B.weight": torch.randn(8, 4),
    }
    save_file(lora, str(tmp_path / "in.safetensors"))
    out = ship_lora(tmp_path / "in.safetensors", tmp_path / "out" / "student.safetensors")
    got = load_file(str(out))
    assert set(got) == set(lora) and all(v.dtype == torch.float16 for v in got.values())
    assert (
        main(["lora", str(tmp_path / "in.safetensors"), str(tmp_path / "s32.safetensors"), "--dtype", "float32"]) == 0
    )
    assert "s32.safetensors" in capsys.readouterr().out
    assert main(["pipeline", str(tmp_path / "nothing"), str(tmp_path / "x")]) == 2
    assert "no model_index.json" in capsys.readouterr().err
