"""Tests for prompt loading, grouped sampling and the prompt datamodule."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data.distributed import DistributedSampler

from tdmr1_lightning.data import (
    GroupedPromptSampler,
    PromptDataModule,
    PromptDataset,
    PromptFileError,
    collate_groups,
    load_prompts,
)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _prompt_file(tmp_path: Path, n: int, name: str = "prompts.txt") -> Path:
    return _write(tmp_path / name, "".join(f"prompt {i}\n" for i in range(n)))


def _steps(sampler: GroupedPromptSampler) -> list[list[int]]:
    indices = list(sampler)
    k = sampler.prompts_per_step_local
    return [indices[i : i + k] for i in range(0, len(indices), k)]


# --- load_prompts ---------------------------------------------------------------


def test_load_text_skips_blank_and_comment_lines(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.txt", "# header\n  a cat  \n\n\t\n# another\nA dog on a skateboard\n")
    assert load_prompts(path) == [{"prompt": "a cat"}, {"prompt": "A dog on a skateboard"}]


def test_load_unknown_suffix_is_text(tmp_path: Path) -> None:
    assert load_prompts(_write(tmp_path / "prompts.list", "x\ny\n")) == [{"prompt": "x"}, {"prompt": "y"}]


def test_load_jsonl_keeps_metadata(tmp_path: Path) -> None:
    lines = [
        {"prompt": "two red apples", "tag": "counting", "include": [{"class": "apple", "count": 2}]},
        {"prompt": "a blue sky"},
    ]
    path = _write(tmp_path / "p.jsonl", json.dumps(lines[0]) + "\n\n" + json.dumps(lines[1]) + "\n")
    assert load_prompts(str(path)) == lines


def test_load_json_array(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.json", json.dumps(["a", {"prompt": "b", "k": 1}]))
    assert load_prompts(path) == [{"prompt": "a"}, {"prompt": "b", "k": 1}]


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        ("empty.txt", "", "no prompts"),
        ("comments.txt", "# only\n\n   \n", "no prompts"),
        ("empty.jsonl", "\n\n", "no prompts"),
        ("bad.jsonl", '{"prompt": "ok"}\n{"prompt": \n', r"line 2: invalid JSON"),
        ("list.jsonl", '{"prompt": "ok"}\n\n["a"]\n', r"line 3: expected a JSON object"),
        ("missing.jsonl", '{"text": "a"}\n', r"line 1: missing 'prompt'"),
        ("blank.jsonl", '{"prompt": "a"}\n{"prompt": "  "}\n', r"line 2: 'prompt' is empty"),
        ("nonstr.jsonl", '{"prompt": 3}\n', r"line 1: 'prompt' must be a string"),
        ("obj.json", '{"prompt": "a"}', "expected a JSON array"),
        ("items.json", '["a", 3]', r"item 2: expected a JSON object"),
    ],
)
def test_load_errors_name_file_and_line(tmp_path: Path, name: str, text: str, match: str) -> None:
    path = _write(tmp_path / name, text)
    with pytest.raises(PromptFileError, match=match) as info:
        load_prompts(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_load_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.txt"
    with pytest.raises(PromptFileError, match="does not exist") as info:
        load_prompts(path)
    assert str(path) in str(info.value)


# --- GroupedPromptSampler --------------------------------------------------------


def test_sampler_is_distributed_sampler() -> None:
    sampler = GroupedPromptSampler(range(8), prompts_per_step=4, num_replicas=2, rank=0)
    assert isinstance(sampler, DistributedSampler)


def test_sampler_ranks_split_each_step_disjointly() -> None:
    dataset, p = range(40), 8
    ranks = [GroupedPromptSampler(dataset, p, num_replicas=2, rank=r, seed=3) for r in range(2)]
    steps = [_steps(s) for s in ranks]
    assert len(steps[0]) == len(steps[1]) == 5
    seen: list[int] = []
    for step0, step1 in zip(*steps):
        assert len(step0) == len(step1) == 4
        assert not set(step0) & set(step1)
        seen += step0 + step1
    # len(dataset) % P == 0: the epoch is exactly one permutation.
    assert sorted(seen) == list(dataset)
    # Both ranks slice the same global order: rank r holds [r*P_local, (r+1)*P_local).
    order = ranks[0]._epoch_order().view(-1, p)
    assert steps[0] == order[:, :4].tolist() and steps[1] == order[:, 4:].tolist()


def test_sampler_same_seed_and_epoch_same_order() -> None:
    a = GroupedPromptSampler(range(30), 6, num_replicas=3, rank=1, seed=7)
    b = GroupedPromptSampler(range(30), 6, num_replicas=3, rank=1, seed=7)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b)


def test_sampler_epochs_and_seeds_permute_differently() -> None:
    sampler = GroupedPromptSampler(range(64), 64, num_replicas=1, rank=0, seed=0)
    epoch0 = list(sampler)
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    other_seed = list(GroupedPromptSampler(range(64), 64, num_replicas=1, rank=0, seed=1))
    assert sorted(epoch0) == sorted(epoch1) == list(range(64))
    assert epoch0 != epoch1
    assert epoch0 != other_seed


def test_sampler_no_shuffle_is_identity() -> None:
    sampler = GroupedPromptSampler(range(10), 4, num_replicas=2, rank=1, shuffle=False)
    assert _steps(sampler) == [[2, 3], [6, 7], [0, 1]]


def test_sampler_wraps_when_len_not_multiple_of_p() -> None:
    sampler = GroupedPromptSampler(range(10), 4, num_replicas=1, rank=0, seed=5)
    indices = list(sampler)
    assert len(indices) == len(sampler) == 12  # ceil(10 / 4) = 3 steps
    assert sorted(indices[:10]) == list(range(10))  # one full permutation first
    generator = torch.Generator().manual_seed(5)
    torch.randperm(10, generator=generator)
    assert indices[10:] == torch.randperm(10, generator=generator)[:2].tolist()


def test_sampler_wraps_when_len_smaller_than_p() -> None:
    samplers = [GroupedPromptSampler(range(3), 8, num_replicas=2, rank=r) for r in range(2)]
    steps = [_steps(s) for s in samplers]
    assert [len(s) for s in steps] == [1, 1]
    step = steps[0][0] + steps[1][0]
    assert len(step) == 8
    assert sorted(step[:3]) == sorted(step[3:6]) == [0, 1, 2]


@pytest.mark.parametrize(("n", "p", "world"), [(1, 1, 1), (7, 4, 2), (20, 6, 3), (5, 12, 4), (100, 48, 8)])
def test_sampler_len_matches_iteration(n: int, p: int, world: int) -> None:
    for rank in range(world):
        sampler = GroupedPromptSampler(range(n), p, num_replicas=world, rank=rank)
        assert len(sampler) == len(list(sampler)) == -(-n // p) * (p // world)


def test_sampler_validation() -> None:
    with pytest.raises(ValueError, match=r"prompts_per_step=6 .*world size \(4\)"):
        GroupedPromptSampler(range(10), 6, num_replicas=4, rank=0)
    with pytest.raises(ValueError, match="prompts_per_step must be >= 1"):
        GroupedPromptSampler(range(10), 0, num_replicas=1, rank=0)
    with pytest.raises(ValueError, match="empty"):
        GroupedPromptSampler([], 4, num_replicas=1, rank=0)
    with pytest.raises(ValueError):
        GroupedPromptSampler(range(10), 4, num_replicas=2, rank=2)


# --- collate_groups --------------------------------------------------------------


def test_collate_repeats_groups_contiguously() -> None:
    dataset = PromptDataset([{"prompt": "a", "tag": "x"}, {"prompt": "b"}, {"prompt": "c", "tag": "z"}])
    batch = collate_groups([dataset[2], dataset[0]], group_size=3)
    assert batch["prompts"] == ["c"] * 3 + ["a"] * 3
    assert batch["group_index"].tolist() == [0, 0, 0, 1, 1, 1]
    assert batch["group_index"].dtype == torch.long
    assert batch["prompt_index"].tolist() == [2, 2, 2, 0, 0, 0]
    assert batch["metadata"] == [{"tag": "z"}] * 3 + [{"tag": "x"}] * 3
    batch["metadata"][0]["tag"] = "changed"
    assert batch["metadata"][1] == {"tag": "z"}


def test_collate_without_index_and_bad_group_size() -> None:
    batch = collate_groups([{"prompt": "a"}], group_size=2)
    assert "prompt_index" not in batch
    assert batch["metadata"] == [{}, {}]
    with pytest.raises(ValueError, match="group_size"):
        collate_groups([{"prompt": "a"}], group_size=0)


def test_collate_a_share_of_each_group_keeps_step_wide_indices() -> None:
    # groups of 4 shared by 2 processes: the second process holds draws 2 and 3 of each of its groups
    batch = collate_groups([{"prompt": "a"}, {"prompt": "b"}], group_size=4, shares=2, share=1, first_group=3)
    assert batch["prompts"] == ["a", "a", "b", "b"]
    assert batch["group_index"].tolist() == [3, 3, 4, 4]
    assert batch["sample_index"].tolist() == [14, 15, 18, 19]
    whole = collate_groups([{"prompt": "a"}], group_size=3)
    assert whole["sample_index"].tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="share 2 of 2"):
        collate_groups([{"prompt": "a"}], group_size=4, shares=2, share=2)


def test_datamodule_processes_share_groups(tmp_path: Path) -> None:
    train = _prompt_file(tmp_path, 16)
    batches = {}
    for rank in range(4):
        dm = PromptDataModule(str(train), prompts_per_step=4, group_size=6, processes_per_group=2, shuffle_seed=2)
        dm.trainer = SimpleNamespace(world_size=4, global_rank=rank)
        dm.setup("fit")
        assert (dm.prompts_per_step_local, dm.samples_per_group_local, dm.samples_per_step_local) == (2, 3, 6)
        batches[rank] = next(iter(dm.train_dataloader()))
    # ranks 0 and 1 share the step's groups 0 and 1, ranks 2 and 3 groups 2 and 3; together every draw once
    assert batches[0]["prompt_index"].tolist() == batches[1]["prompt_index"].tolist()
    assert batches[0]["group_index"].tolist() == batches[1]["group_index"].tolist() == [0, 0, 0, 1, 1, 1]
    assert batches[0]["sample_index"].tolist() == [0, 1, 2, 6, 7, 8] and batches[1]["sample_index"].tolist() == [
        3,
        4,
        5,
        9,
        10,
        11,
    ]
    assert batches[2]["group_index"].tolist() == batches[3]["group_index"].tolist() == [2, 2, 2, 3, 3, 3]
    assert sorted(i for b in batches.values() for i in b["sample_index"].tolist()) == list(range(24))
    single = PromptDataModule(str(train), prompts_per_step=4, group_size=6, shuffle_seed=2)
    single.setup("fit")
    one = next(iter(single.train_dataloader()))
    for b in batches.values():  # the same prompt for the same draw as one process holding everything
        for prompt, k in zip(b["prompts"], b["sample_index"].tolist()):
            assert one["prompts"][k] == prompt


@pytest.mark.parametrize(
    "world, group_size, q, prompts, match",
    [
        (3, 4, 2, 4, r"processes_per_group=2 does not divide the world size \(3\)"),
        (4, 6, 4, 4, r"group_size=6 does not split into data.processes_per_group=4"),
        (4, 4, 2, 3, r"prompts_per_step=3 must be divisible by the world size \(4\) / data.processes_per_group \(2\)"),
    ],
)
def test_group_geometry_that_cannot_be_split_is_refused(tmp_path: Path, world, group_size, q, prompts, match) -> None:
    train = _prompt_file(tmp_path, 8)
    with pytest.raises(ValueError, match=match):
        dm = PromptDataModule(str(train), prompts_per_step=prompts, group_size=group_size, processes_per_group=q)
        dm.trainer = SimpleNamespace(world_size=world, global_rank=0)
        dm.setup("fit")


# --- PromptDataModule -----------------------------------------------------------


def test_datamodule_single_process(tmp_path: Path) -> None:
    train = _prompt_file(tmp_path, 10)
    dm = PromptDataModule(str(train), prompts_per_step=4, group_size=3, shuffle_seed=1)
    dm.setup("fit")
    assert dm.samples_per_step_local == 12
    batches = list(dm.train_dataloader())
    assert len(batches) == 3
    for batch in batches:
        assert len(batch["prompts"]) == 12
        assert batch["group_index"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
        assert batch["prompts"] == [f"prompt {i}" for i in batch["prompt_index"].tolist()]
    assert dm.val_dataloader() == []


def test_datamodule_shuffle_seed_defaults_to_the_global_seed(tmp_path: Path, monkeypatch) -> None:
    train = _prompt_file(tmp_path, 10)
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")  # what seed_everything(7) exports
    assert PromptDataModule(str(train)).hparams.shuffle_seed == 7
    assert PromptDataModule(str(train), shuffle_seed=2).hparams.shuffle_seed == 2
    monkeypatch.delenv("PL_GLOBAL_SEED")
    assert PromptDataModule(str(train)).shuffle_seed == 0


def test_datamodule_with_fake_trainer_rank(tmp_path: Path) -> None:
    train = _prompt_file(tmp_path, 16)
    dm = PromptDataModule(str(train), prompts_per_step=8, group_size=2, shuffle_seed=4)
    dm.trainer = SimpleNamespace(world_size=2, global_rank=1)
    dm.setup("fit")
    assert dm.samples_per_step_local == 8
    batches = list(dm.train_dataloader())
    assert len(batches) == 2
    assert all(len(b["prompts"]) == 8 for b in batches)
    rank1 = [i for b in batches for i in b["prompt_index"][::2].tolist()]
    expected = GroupedPromptSampler(range(16), 8, num_replicas=2, rank=1, seed=4)
    assert rank1 == list(expected)


def test_train_loader_resumes_mid_epoch_where_it_stopped(tmp_path: Path) -> None:
    train = _prompt_file(tmp_path, 10)

    def loader():
        dm = PromptDataModule(str(train), prompts_per_step=2, group_size=1, shuffle_seed=3)
        dm.setup("fit")
        return dm.train_dataloader()

    def order(batches):
        return [b["prompt_index"].tolist() for b in batches]

    straight = loader()
    straight.sampler.set_epoch(1)
    expected = order(straight)  # 5 steps of epoch 1
    first = loader()
    first.sampler.set_epoch(1)
    it = iter(first)
    seen = order([next(it), next(it)])
    state = first.state_dict()
    assert state == {"epoch": 1, "batches": 2}
    resumed = loader()
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(1)  # Lightning sets the epoch before the first batch
    assert seen + order(resumed) == expected
    assert resumed.state_dict() == {"epoch": 1, "batches": 5}
    # the skip is for that epoch, once: the next epoch (and the one after a finished epoch) starts at its first step
    resumed.sampler.set_epoch(2)
    assert len(order(resumed)) == 5
    after_end = loader()
    after_end.load_state_dict({"epoch": 1, "batches": 5})
    after_end.sampler.set_epoch(2)
    assert len(order(after_end)) == 5
    with pytest.raises(ValueError, match="lacks"):
        after_end.load_state_dict({"epoch": 1})


def test_datamodule_val_loader(tmp_path: Path) -> None:
    train = _prompt_file(tmp_path, 4)
    val = _write(tmp_path / "val.jsonl", "".join(json.dumps({"prompt": f"v{i}", "id": i}) + "\n" for i in range(5)))
    dm = PromptDataModule(str(train), val_prompts=str(val), val_batch_size=2)
    dm.setup("validate")
    batches = list(dm.val_dataloader())
    assert [b["prompts"] for b in batches] == [["v0", "v1"], ["v2", "v3"], ["v4"]]
    assert batches[0]["metadata"] == [{"id": 0}, {"id": 1}]
    assert batches[0]["group_index"].tolist() == [0, 1]


def test_datamodule_validation(tmp_path: Path) -> None:
    train = _prompt_file(tmp_path, 4)
    for name in ("prompts_per_step", "group_size", "val_batch_size"):
        with pytest.raises(ValueError, match=name):
            PromptDataModule(str(train), **{name: 0})
    with pytest.raises(ValueError, match="num_workers"):
        PromptDataModule(str(train), num_workers=-1)
    with pytest.raises(PromptFileError, match="does not exist"):
        PromptDataModule(str(tmp_path / "missing.txt"))
    with pytest.raises(PromptFileError, match="no prompts"):
        PromptDataModule(str(train), val_prompts=str(_write(tmp_path / "empty.txt", "\n")))
    dm = PromptDataModule(str(train), prompts_per_step=6)
    with pytest.raises(RuntimeError, match="setup"):
        _ = dm.samples_per_step_local
    dm.trainer = SimpleNamespace(world_size=4, global_rank=0)
    with pytest.raises(ValueError, match=r"prompts_per_step=6 .*world size \(4\)"):
        dm.setup("fit")


def test_keyed_generator_draws_one_stream_per_key() -> None:
    from tdmr1_lightning.data import keyed_generator

    torch.rand(3)  # what was drawn before does not matter
    a = torch.rand(4, generator=keyed_generator(0, 1, 2))
    assert torch.equal(a, torch.rand(4, generator=keyed_generator(0, 1, 2)))
    assert not torch.equal(a, torch.rand(4, generator=keyed_generator(0, 1, 3)))
