"""TDM-R1 learns on the embedded default: a seeded two-epoch run from the shipped student raises the reward.

The run is :func:`tdmr1_lightning.shapes.learning.reward_before_and_after` (the quick start's config
on a fixed prompt set); ``python benchmarks/shapes_learning.py`` repeats it over seeds. The margin
comes from those repeated runs with the shipped files (docs/experiments/shapes.md, "Does TDM-R1 learn here?"),
measured after the generator loss took the reference's weights and the surrogate's own guidance:
seeds 0, 1, 2 gained +0.031, +0.042, +0.015; without the reward term (``--model.generator_loss.reward_weight=0``,
the TDM part alone, which now raises the score in two seeds) +0.012, +0.014,
-0.005. The test runs seed 1, the seed whose gain depends most on the reward (+0.029 over its run
without it), and asks for a gain above 0.028: halfway between that seed's gain without the reward and
with it.
"""

import pytest

from tdmr1_lightning.shapes.learning import reward_before_and_after

NUM_PROMPTS, PROMPTS_PER_STEP, EPOCHS, IMAGES_PER_PROMPT = 160, 8, 2, 4  # 40 updates of 64 samples
SEED, MARGIN = 1, 0.028


@pytest.mark.slow
def test_two_epochs_from_the_shipped_student_raise_the_mean_reward(tmp_path):
    before, after = reward_before_and_after(
        tmp_path,
        seed=SEED,
        num_prompts=NUM_PROMPTS,
        prompts_per_step=PROMPTS_PER_STEP,
        epochs=EPOCHS,
        images_per_prompt=IMAGES_PER_PROMPT,
    )
    assert after - before > MARGIN, f"mean soft GenEval score {before:.4f} -> {after:.4f}"


def test_the_measurement_reads_its_prompts_and_world_from_the_config(tmp_path):
    from tdmr1_lightning.shapes.learning import CONFIG, TRAIN_PROMPTS, _prompts_and_world, fixed_prompts

    train, world = _prompts_and_world(CONFIG)
    assert train.resolve() == TRAIN_PROMPTS.resolve() and world == {}
    config = tmp_path / "grid2.yaml"
    config.write_text(
        f"data: {{train_prompts: {TRAIN_PROMPTS}}}\n"
        "model: {rewards: [{name: shapes_geneval, init_args: {mode: soft, world: {grid: 2}}}]}\n"
    )
    assert _prompts_and_world(config) == (TRAIN_PROMPTS, {"grid": 2})
    lines = fixed_prompts(tmp_path / "p.jsonl", 5, train).read_text().splitlines()
    assert len(lines) == len(set(lines)) == 5
    tagged = fixed_prompts(tmp_path / "t.jsonl", 5, train, tags=("color_attr",)).read_text().splitlines()
    assert len(set(tagged)) == 5 and all('"color_attr"' in line for line in tagged)
    config.write_text(f"data: {{train_prompts: {TRAIN_PROMPTS}}}\nmodel: {{rewards: [{{name: ocr}}]}}\n")
    with pytest.raises(ValueError, match="no shapes_geneval reward"):
        _prompts_and_world(config)
    config.write_text("model: {rewards: [{name: shapes_geneval}]}\n")
    with pytest.raises(ValueError, match="train_prompts is not set"):
        _prompts_and_world(config)
