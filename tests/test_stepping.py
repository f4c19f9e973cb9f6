"""The manual two-optimizer stepping helper and the reward scorer, each on its own."""

import lightning as L
import pytest
import torch

from tdmr1_lightning.reward import Reward, RewardOutput, WeightedRewards
from tdmr1_lightning.scoring import RewardScorer
from tdmr1_lightning.stepping import ManualStepper, grad_norm


class TwoOptimizers(L.LightningModule):
    """Two linear 'roles', each with its own optimizer, stepped as TDMR1Module steps them."""

    def __init__(self, gradient_clip: float):
        super().__init__()
        self.automatic_optimization = False
        self.critic = torch.nn.Linear(3, 1, bias=False)
        self.generator = torch.nn.Linear(3, 1, bias=False)
        self.stepper = ManualStepper(self, gradient_clip)
        self.data = torch.randn(12, 3)
        self.norms = []

    def training_step(self, batch, batch_idx):
        opt_g, opt_c = self.optimizers()
        with self.stepper.accumulating():
            for x in batch[0].split(2):  # two micro-batches accumulate into one update
                self.manual_backward(self.critic(x).square().sum() + self.generator(x).sum())
        self.norms.append((self.stepper.step(opt_c, counts_as_update=False), self.stepper.step(opt_g)))

    def configure_optimizers(self):
        return [torch.optim.SGD(self.generator.parameters(), lr=1.0), torch.optim.SGD(self.critic.parameters(), lr=1.0)]

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(self.data), batch_size=4)


def _fit(module, max_steps):
    trainer = L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(module)
    return trainer


def test_global_step_counts_generator_updates_only():
    torch.manual_seed(0)
    module = TwoOptimizers(gradient_clip=0.0)
    trainer = _fit(module, max_steps=3)
    # both optimizers stepped 3 times, but only the generator's steps are counted
    assert trainer.global_step == 3 and len(module.norms) == 3


def test_step_reports_the_norm_before_clipping_and_clips_to_the_bound():
    torch.manual_seed(0)
    module = TwoOptimizers(gradient_clip=0.01)
    before = module.generator.weight.detach().clone()
    _fit(module, max_steps=1)
    x = module.data[:4]  # the first batch (not shuffled)
    expected = x.sum(0).norm()  # d/dw sum(w . x) over its 4 samples
    _, generator_norm = module.norms[0]
    assert torch.allclose(generator_norm, expected, rtol=1e-6)
    change = (module.generator.weight.detach() - before).norm()
    assert torch.allclose(change, torch.tensor(0.01), rtol=1e-5)  # SGD with lr 1: the clipped gradient


def test_grad_norm_is_the_global_l2_norm():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 4.0, 12.0])
    assert grad_norm([a, b]).item() == pytest.approx(13.0)
    assert grad_norm([]).item() == 0.0


class PromptLength(Reward):
    def score(self, images, prompts, metadata):
        return RewardOutput(scores=torch.tensor([float(len(p)) for p in prompts]))


@pytest.mark.parametrize("overlap", [False, True])
def test_scorer_gives_the_same_outputs_at_once_or_in_a_thread(overlap):
    rewards = WeightedRewards([("length", PromptLength(), 2.0)])
    scorer = RewardScorer(rewards, None, overlap)
    images = torch.zeros(3, 3, 8, 8, dtype=torch.uint8)
    outputs, seconds, waited = scorer.finish(scorer.start(images, ["a", "bb", "ccc"], [{}] * 3))
    out, weight = outputs["length"]
    assert out.scores.tolist() == [1.0, 2.0, 3.0] and weight == 2.0 and seconds >= 0 and waited >= 0
    assert scorer.active == overlap  # a worker thread only when overlapping
    scorer.close()
    assert not scorer.active
