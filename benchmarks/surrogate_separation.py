"""Does the DGPO surrogate learn to tell good samples from bad ones? The surrogate alone, generator fixed.

Rolls out ``--prompts`` training prompts x ``--group-size`` samples from the shipped TDM student
(configs/shapes/tdmr1.yaml), scores them with the config's reward and trains only the surrogate with
the DGPO loss (section 5.2, clips off: the "old" surrogate is the current one). Every
``--every`` updates it measures the surrogate's implied reward ``beta * (l_ref - l)`` (averaged over
8 fixed noise levels and noises) on three batches and prints, per batch, how well it ranks the samples
of each group: the gap between the mean implied reward of positive- and negative-advantage samples,
the fraction of within-group pairs ordered as their rewards are, and the correlation with the
advantages.

* ``train``: the batch it trains on (with ``--fresh``, the first of its batches);
* ``same``: new samples of the same prompts (does it generalise to new samples?);
* ``other``: samples of other prompts (does it generalise to new prompts?).

    python benchmarks/surrogate_separation.py                  # one fixed batch, lr 1e-3: memorises
    python benchmarks/surrogate_separation.py --fresh --lr 3e-4  # fresh samples every update

A pair accuracy of 0.5 is chance. Extra arguments after ``--`` go to the config parser.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "shapes" / "tdmr1.yaml"
PROMPTS = ROOT / "configs" / "prompts" / "shapes" / "train.jsonl"


def ranking(implied: torch.Tensor, advantages: torch.Tensor, group: torch.Tensor) -> tuple[float, float, float]:
    """``(gap, pair accuracy, correlation)`` of implied rewards against advantages within groups."""
    pos, neg = advantages > 0, advantages < 0
    gap = float(implied[pos].mean() - implied[neg].mean()) if pos.any() and neg.any() else float("nan")
    right = pairs = 0
    for g in group.unique():
        idx = (group == g).nonzero().flatten()
        better = advantages[idx, None] > advantages[None, idx]
        pairs += int(better.sum())
        right += int((better & (implied[idx, None] > implied[None, idx])).sum())
    corr = float(torch.corrcoef(torch.stack([implied, advantages]))[0, 1]) if implied.std() > 0 else float("nan")
    return gap, right / max(pairs, 1), corr


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--updates", type=int, default=60)
    parser.add_argument("--every", type=int, default=10, help="measure every this many updates")
    parser.add_argument("--lr", type=float, default=1e-3, help="surrogate learning rate (AdamW, betas 0.9, 0.999)")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--fresh", action="store_true", help="new rollouts of the same prompts for every update")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from tdmr1_lightning import losses
    from tdmr1_lightning.backbones.base import GENERATOR, SURROGATE, TEACHER
    from tdmr1_lightning.cli import build_cli
    from tdmr1_lightning.reward import WeightedRewards
    from tdmr1_lightning.schedule import renoise, sample_query_level

    torch.manual_seed(args.seed)
    cli = build_cli(["--config", str(CONFIG), "--trainer.callbacks=null", "--trainer.logger=false", *extra], run=False)
    module = cli.model
    module.configure_model()
    bb = module.backbone
    s_, K, k, mbs = (
        module.boundaries,
        module.schedule.num_steps,
        module.schedule.shift,
        module.batching.micro_batch_size,
    )
    records = [json.loads(line) for line in PROMPTS.read_text().splitlines()]
    random.Random(args.seed).shuffle(records)

    def batch(recs: list[dict], seed: int) -> dict:
        prompts = [r["prompt"] for r in recs for _ in range(args.group_size)]
        meta = [r for r in recs for _ in range(args.group_size)]
        group = torch.arange(len(recs)).repeat_interleave(args.group_size)
        cond = bb.encode_prompts(prompts)
        trajectory = module.rollout(cond, GENERATOR, torch.Generator().manual_seed(seed))
        rewards, valid = WeightedRewards.weighted_sum(module.rewards(module.decode(trajectory[-1]), prompts, meta))
        adv = losses.group_advantages(rewards, valid, group, losses.reward_std(rewards, valid))
        return {"cond": cond, "trajectory": trajectory, "rewards": rewards, "adv": adv, "group": group}

    def level(gen: torch.Generator) -> tuple[int, float]:  # j' with probability ~ j' + 1, then s as in training
        j = int(torch.multinomial(torch.arange(1, K + 1, dtype=torch.float), 1, generator=gen))
        return j, sample_query_level(
            max(s_[j + 1], module.surrogate_loss.s_min_reward), k, module.schedule.level_margin, gen
        )

    def query(b: dict, j: int, s: float, noise_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        x_n = b["trajectory"][j + 1]
        xi = torch.randn(
            (int(b["group"].max()) + 1, *x_n.shape[1:]), generator=torch.Generator().manual_seed(noise_seed)
        )[b["group"]]
        return renoise(x_n, s_[j + 1], s, xi), losses.surrogate_target_velocity(x_n, xi, s_[j + 1], s)

    @torch.no_grad()
    def per_sample_loss(role: str, b: dict, x_s: torch.Tensor, s: float, target: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                ((target[i : i + mbs] - bb.velocity(role, x_s[i : i + mbs], s, b["cond"][i : i + mbs])) ** 2)
                .flatten(1)
                .mean(1)
                for i in range(0, len(x_s), mbs)
            ]
        )

    gen = torch.Generator().manual_seed(10_000 + args.seed)
    probes = [(*level(gen), 20_000 + i) for i in range(8)]
    reference: dict[tuple, torch.Tensor] = {}

    def implied(name: str, b: dict) -> torch.Tensor:
        total = torch.zeros(len(b["rewards"]))
        for j, s, noise_seed in probes:
            x_s, target = query(b, j, s, noise_seed)
            if (name, j, s, noise_seed) not in reference:
                reference[name, j, s, noise_seed] = per_sample_loss(TEACHER, b, x_s, s, target)
            total += reference[name, j, s, noise_seed] - per_sample_loss(SURROGATE, b, x_s, s, target)
        return module.surrogate_loss.beta * total / len(probes)

    t0 = time.perf_counter()
    first = batch(records[: args.prompts], args.seed * 1000 + 1)
    held = {
        "train": first,
        "same": batch(records[: args.prompts], args.seed * 1000 + 2),
        "other": batch(records[args.prompts : 2 * args.prompts], args.seed * 1000 + 3),
    }
    for name, b in held.items():
        print(
            f"{name}: mean reward {float(b['rewards'].mean()):.3f}, "
            f"positive advantages {float((b['adv'] > 0).float().mean()):.2f}"
        )
    params = bb.roles.parameters_of(SURROGATE)
    optimizer = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.999), weight_decay=1e-4)
    train_gen = torch.Generator().manual_seed(30_000 + args.seed)
    for update in range(args.updates + 1):
        if update % args.every == 0:
            cells = []
            for name, b in held.items():
                gap, accuracy, corr = ranking(implied(name, b), b["adv"], b["group"])
                cells.append(f"{name} gap {gap:+.4f} pairs {accuracy:.2f} corr {corr:+.2f}")
            print(f"update {update:4d} ({time.perf_counter() - t0:4.0f} s): " + " | ".join(cells), flush=True)
        if update == args.updates:
            break
        b = batch(records[: args.prompts], args.seed * 1000 + 100 + update) if args.fresh else first
        j, s = level(train_gen)
        x_s, target = query(b, j, s, int(torch.randint(2**31, (), generator=train_gen)))
        optimizer.zero_grad(set_to_none=True)
        chunks = range(0, len(x_s), mbs)
        for i in chunks:
            sl = slice(i, i + mbs)
            with torch.no_grad():
                v_teacher = bb.velocity(TEACHER, x_s[sl], s, b["cond"][sl])
            v_surrogate = bb.velocity(SURROGATE, x_s[sl], s, b["cond"][sl])
            out = losses.surrogate_loss(
                v_surrogate,
                v_teacher,
                v_surrogate.detach(),
                v_teacher,
                target[sl],
                b["adv"][sl],
                b["group"][sl],
                module.surrogate_loss.beta,
                clip_range=float("inf"),
                trust_threshold=float("inf"),
                lambda_kl=module.surrogate_loss.lambda_kl,
                step_weight=(j + 1) / K,
            )
            (out.loss / len(chunks)).backward()
        torch.nn.utils.clip_grad_norm_(params, module.stepping.gradient_clip)
        optimizer.step()
    return 0


if __name__ == "__main__":
    sys.exit(main())
