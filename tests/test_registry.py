"""The reward registry (entry points), the reward contract, and the combination of rewards."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from tdmr1_rewards.jpeg import JPEGCompressibility

from tdmr1_lightning import registry
from tdmr1_lightning.cli import main
from tdmr1_lightning.registry import RewardRegistryError, RewardSpec
from tdmr1_lightning.reward import Reward, RewardOutput, WeightedRewards

ROOT = Path(__file__).resolve().parents[1]


def make_distribution(site: Path, dist: str, version: str, module: str, source: str, entries: dict[str, str]) -> None:
    """A minimal installed distribution in ``site``: a module plus ``.dist-info`` with entry points."""
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = "\n".join(f"{name} = {value}" for name, value in entries.items())
    (info / "entry_points.txt").write_text(f"[tdmr1.rewards]\n{lines}\n")


GOOD = '''
import torch
from tdmr1_lightning.reward import Reward, RewardOutput
IMPORTED = True

class Const(Reward):
    """Always the same score (a test plugin)."""
    def __init__(self, value: float = 1.0):
        self.value = value
    def score(self, images, prompts, metadata):
        return RewardOutput(scores=torch.full((len(prompts),), self.value))
'''


@pytest.fixture
def site(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(registry.AUTOLOAD_ENV, raising=False)
    return tmp_path


def test_builtins_are_registered_and_discovery_imports_nothing(site):
    make_distribution(site, "plugin-a", "1.2.3", "plugin_a_mod", GOOD, {"const": "plugin_a_mod:Const"})
    found = registry.discover()
    assert found["jpeg_compressibility"][0].distribution.lower().replace("_", "-") == "tdmr1-lightning"
    assert found["const"][0].distribution == "plugin-a" and found["const"][0].version == "1.2.3"
    assert "plugin_a_mod" not in sys.modules
    reward = RewardSpec(name="const", init_args={"value": 2.0}).build()
    assert "plugin_a_mod" in sys.modules
    out = reward(torch.zeros(3, 3, 8, 8, dtype=torch.uint8), ["a", "b", "c"])
    assert out.scores.tolist() == [2.0, 2.0, 2.0]


def test_unknown_name_lists_the_installed_rewards(site):
    with pytest.raises(RewardRegistryError, match=r"unknown reward 'nope'; installed rewards: .*jpeg_compressibility"):
        RewardSpec(name="nope").build()


def test_two_distributions_registering_one_name(site):
    make_distribution(site, "plugin-a", "1.0", "plugin_a_mod", GOOD, {"shared": "plugin_a_mod:Const"})
    make_distribution(site, "plugin-b", "2.0", "plugin_b_mod", GOOD, {"shared": "plugin_b_mod:Const"})
    with pytest.raises(
        RewardRegistryError, match=r"'shared' is registered by two distributions: plugin-[ab] .* and plugin-[ab]"
    ):
        RewardSpec(name="shared").build()
    assert "CONFLICT" in registry.format_reward_table()


def test_plugin_failing_on_import_names_its_distribution(site):
    make_distribution(
        site,
        "broken-plugin",
        "0.3",
        "broken_mod",
        "raise ImportError('needs libfoo')\n",
        {"broken": "broken_mod:Thing"},
    )
    with pytest.raises(
        RewardRegistryError,
        match=r"'broken' from distribution broken-plugin 0.3 .*failed to import: ImportError: needs libfoo",
    ):
        RewardSpec(name="broken").build()
    assert "cannot load" in registry.format_reward_table()  # listing still works


def test_a_registered_object_that_is_not_a_reward(site):
    make_distribution(site, "odd-plugin", "0.1", "odd_mod", "def fn(): pass\n", {"odd": "odd_mod:fn"})
    with pytest.raises(RewardRegistryError, match="not a subclass of tdmr1_lightning.reward.Reward"):
        RewardSpec(name="odd").build()


def test_autoload_switch_ignores_third_party_plugins(site, monkeypatch):
    make_distribution(site, "plugin-a", "1.0", "plugin_a_mod", GOOD, {"const": "plugin_a_mod:Const"})
    monkeypatch.setenv(registry.AUTOLOAD_ENV, "1")
    assert "const" not in registry.discover() and "jpeg_compressibility" in registry.discover()
    with pytest.raises(RewardRegistryError, match="TDMR1_DISABLE_PLUGIN_AUTOLOAD is set"):
        RewardSpec(name="const").build()
    # a class_path still works: autoload only concerns entry points
    assert isinstance(RewardSpec(class_path="plugin_a_mod.Const").build(), Reward)


def test_spec_errors_are_clear(site):
    with pytest.raises(RewardRegistryError, match="exactly one of `name` or `class_path`"):
        RewardSpec().build()
    with pytest.raises(RewardRegistryError, match=r"'jpeg_compressibility': bad init_args \['qualty'\]"):
        RewardSpec(name="jpeg_compressibility", init_args={"qualty": 3}).build()
    with pytest.raises(RewardRegistryError, match=r"model.rewards\[0\]: unknown keys \['wieght'\]"):
        RewardSpec.from_config({"name": "jpeg_compressibility", "wieght": 2}, "model.rewards[0]")
    assert RewardSpec.from_config("jpeg_compressibility").name == "jpeg_compressibility"


def test_rewards_list_command(site, capsys):
    make_distribution(site, "plugin-a", "1.2.3", "plugin_a_mod", GOOD, {"const": "plugin_a_mod:Const"})
    assert main(["rewards", "list"]) == 0
    out = capsys.readouterr().out
    assert "name" in out.splitlines()[0] and "distribution" in out.splitlines()[0]
    line = next(line for line in out.splitlines() if line.startswith("const"))
    assert "plugin-a" in line and "1.2.3" in line and "Always the same score" in line
    assert any(line.startswith("jpeg_compressibility") and "JPEG" in line for line in out.splitlines())


# -- the contract ------------------------------------------------------------------------------


class Bad(Reward):
    def __init__(self, scores):
        self.scores = scores

    def score(self, images, prompts, metadata):
        return RewardOutput(scores=self.scores)


def test_contract_rejects_wrong_shapes_and_masks_non_finite():
    images = torch.zeros(3, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"reward Bad: returned scores of shape \(2,\) for 3 images"):
        Bad(torch.zeros(2))(images, ["a"] * 3)
    with pytest.raises(ValueError, match="expected uint8 images"):
        Bad(torch.zeros(3))(images.float(), ["a"] * 3)
    with pytest.warns(RuntimeWarning, match="2 non-finite"):
        out = Bad(torch.tensor([1.0, float("nan"), float("inf")]))(images, ["a"] * 3)
    assert out.valid.tolist() == [True, False, False] and out.scores.tolist() == [1.0, 0.0, 0.0]
    assert out.details["non_finite"] == 2


def test_lazy_load_happens_once_on_the_device():
    class Heavy(Reward):
        loads = 0

        def load(self):
            Heavy.loads += 1
            self.net = torch.nn.Linear(1, 1).to(self.device)

        def score(self, images, prompts, metadata):
            return RewardOutput(scores=torch.zeros(len(prompts)))

    r = Heavy()
    assert Heavy.loads == 0
    images = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    r(images, ["a", "b"])
    r(images, ["a", "b"])
    assert Heavy.loads == 1 and r.net.weight.device == r.device


def test_weighted_rewards_sum_and_validity():
    images = torch.zeros(3, 3, 8, 8, dtype=torch.uint8)
    combined = WeightedRewards(
        [("a", Bad(torch.tensor([1.0, 2.0, 3.0])), 0.5), ("b", Bad(torch.tensor([1.0, float("nan"), 1.0])), 2.0)]
    )
    with pytest.warns(RuntimeWarning):
        outputs = combined(images, ["p"] * 3)
    scores, valid = WeightedRewards.weighted_sum(outputs)
    assert valid.tolist() == [True, False, True]
    assert scores[valid].tolist() == [2.5, 3.5]


def test_jpeg_compressibility_prefers_flat_images():
    flat = torch.full((1, 3, 32, 32), 128, dtype=torch.uint8)
    noisy = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    out = JPEGCompressibility()(torch.cat([flat, noisy]), ["a", "b"])
    assert out.scores[0] > out.scores[1]


# -- the third-party example package -----------------------------------------------------------


@pytest.mark.slow
def test_example_plugin_installs_lists_and_trains(tmp_path, tiny_sd3_path, quiet_trainer):
    target = tmp_path / "site"
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(ROOT / "examples" / "reward-plugin"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    env = {**__import__("os").environ, "PYTHONPATH": f"{target}", "HF_HUB_OFFLINE": "1"}
    listed = subprocess.run(
        [sys.executable, "-m", "tdmr1_lightning", "rewards", "list"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert listed.returncode == 0, listed.stderr[-2000:]
    line = next(line for line in listed.stdout.splitlines() if line.startswith("redness"))
    assert "tdmr1-example-reward" in line and "0.1.0" in line
    fit = subprocess.run(
        [
            sys.executable,
            "-m",
            "tdmr1_lightning",
            "fit",
            "--config",
            "configs/tiny.yaml",
            f"--model.backbone.init_args.directory={tiny_sd3_path}",
            f"--trainer.default_root_dir={tmp_path / 'run'}",
            "--model.rewards=[{name: redness, init_args: {margin: 10}}]",
            "--trainer.max_steps=1",
            *quiet_trainer,
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert "max_steps=1" in fit.stderr + fit.stdout
