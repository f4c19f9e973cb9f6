"""Overhead of one TDM-R1 training step over the network evaluations it must make.

Runs ``trainer.fit`` (through ``build_cli(..., run=False)`` with ``configs/tiny.yaml``) on a random
tiny SD3 built big enough that one transformer evaluation takes tens of ms, and times each training
step with a callback (``on_train_batch_start`` -> ``on_train_batch_end``; the first step is a warm-up
and is excluded). Then, in the same process and with the same shapes, times each network
evaluation the step must make, alone:

* rollout: K generator forwards (no grad) per rollout chunk;
* per micro-batch and per boundary (``TDMR1Module._losses``): generator forward+backward, teacher
  forward (fake-score target), fake forward+backward, teacher and surrogate-old forwards, surrogate
  forward+backward, then for the generator loss the fake forward, the teacher cond+uncond forward
  (batched as 2N), the teacher and surrogate forwards of the reward term;
* prompt encoding and VAE decoding.

The ratio ``step time / sum of evaluations`` is the step's overhead (target <= 1.25). Reward
scoring is timed and shown separately, in neither sum. While fitting, every ``backbone.velocity``
call is recorded (role, batch size, grad on or off) to check the counts read from ``_losses``.

    python benchmarks/epoch_overhead.py [--steps 3] [--repeats 3] [--profile]
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import io
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    BIG_TINY, REPO, TINY_CONFIG, build_pipeline, describe, machine, quiet, sync, table, timeit,
)

import lightning as L  # noqa: E402
import torch  # noqa: E402

from tdmr1_lightning.backbones.base import (  # noqa: E402
    FAKE, GENERATOR, SURROGATE, SURROGATE_OLD, SURROGATE_REF, TEACHER,
)
from tdmr1_lightning.cli import build_cli  # noqa: E402


class StepTimer(L.Callback):
    """Wall time of each training batch (one TDM-R1 step); optionally cProfiles one of them."""

    def __init__(self, profile_batch: int | None = None) -> None:
        self.times: list[float] = []
        self.batches: list[dict] = []
        self.profile_batch = profile_batch
        self.profiler: cProfile.Profile | None = None
        self._t0 = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches.append(batch)
        if self.profile_batch is not None and len(self.times) == self.profile_batch:
            self.profiler = cProfile.Profile()
            self.profiler.enable()
        sync()
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        sync()
        self.times.append(time.perf_counter() - self._t0)
        if self.profiler is not None and len(self.times) - 1 == self.profile_batch:
            self.profiler.disable()


class VelocityRecorder:
    """Wraps ``backbone.velocity`` to count calls by (role, batch size, grad enabled) per step."""

    def __init__(self, backbone, timer: StepTimer) -> None:
        self.calls: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
        self.timer = timer
        inner = backbone.velocity

        def velocity(role, x, s, cond):
            self.calls[len(self.timer.batches)][(role, x.shape[0], torch.is_grad_enabled())] += 1
            return inner(role, x, s, cond)

        backbone.velocity = velocity  # instance attribute: velocity_cond_uncond goes through it too


def expected_evaluations(module, n: int) -> list[tuple[str, str, int, bool, int]]:
    """The network evaluations of one step, read off ``training_step`` / ``rollout`` / ``_losses``.

    Returns ``(label, role, batch, with_grad, count)``; ``with_grad`` means forward + backward.
    """
    hp = module.hparams
    K, M, mbs, rbs = hp.num_steps, hp.boundaries_per_batch, hp.micro_batch_size, module.rollout_batch_size
    with_reward = module.reward is not None
    rows: collections.Counter = collections.Counter()
    labels: dict[tuple, str] = {}

    def add(label, role, batch, grad, count=1):
        rows[(role, batch, grad)] += count
        labels.setdefault((role, batch, grad), label)

    for start in range(0, n, rbs):  # rollout
        add("rollout: generator fwd", GENERATOR, min(rbs, n - start), False, K)
    if hp.trunc_steps < K and with_reward:
        raise SystemExit("this benchmark counts the reward term at every boundary: use trunc_steps >= num_steps")
    for start in range(0, n, mbs):
        m = min(mbs, n - start)
        for _ in range(M):
            add("generator fwd+bwd", GENERATOR, m, True)
            add("teacher fwd (no grad)", TEACHER, m, False)  # 5.1 fake target
            add("fake fwd+bwd", FAKE, m, True)
            if with_reward:
                add("teacher fwd (no grad)", TEACHER, m, False)  # 5.2
                add("surrogate_old fwd (no grad)", SURROGATE_OLD, m, False)
                if hp.reference == "ema":
                    add("surrogate_ref fwd (no grad)", SURROGATE_REF, m, False)
                add("surrogate fwd+bwd", SURROGATE, m, True)
            add("fake fwd (no grad)", FAKE, m, False)  # 5.3
            add("teacher cond+uncond fwd (2N)", TEACHER, 2 * m, False)
            if with_reward:
                add("teacher fwd (no grad)", TEACHER, m, False)
                add("surrogate fwd (no grad)", SURROGATE, m, False)
    return [(labels[k], *k, c) for k, c in rows.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="timed training steps (after one warm-up step)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of each evaluation (median)")
    parser.add_argument("--profile", action="store_true", help="cProfile one extra step and print the top entries")
    parser.add_argument("--top", type=int, default=25, help="profile entries to print")
    args = parser.parse_args()
    quiet()
    print(f"machine: {machine()}")
    print(f"model:   tiny SD3, {describe(BIG_TINY)}, roles as LoRA, float32")

    with tempfile.TemporaryDirectory(prefix="tdmr1-bench-") as tmp:
        tmp = Path(tmp)
        model_dir = build_pipeline(tmp / "tiny-sd3", **BIG_TINY)
        profile_batch = 1 + args.steps if args.profile else None
        max_steps = 1 + args.steps + (1 if args.profile else 0)
        cli = build_cli(
            [
                f"--config={TINY_CONFIG}",
                f"--model.backbone.init_args.directory={model_dir}",
                f"--model.backbone.init_args.resolution={BIG_TINY['resolution']}",
                f"--trainer.max_steps={max_steps}",
                f"--trainer.default_root_dir={tmp / 'run'}",
                "--trainer.limit_val_batches=0",
                "--trainer.logger=false",
                "--trainer.enable_checkpointing=false",
                "--trainer.callbacks=[]",
                "--trainer.enable_progress_bar=false",
                "--trainer.enable_model_summary=false",
            ],
            run=False,
        )
        module, trainer = cli.model, cli.trainer
        timer = StepTimer(profile_batch)
        trainer.callbacks.append(timer)
        module.configure_model()  # builds the roles now, so the recorder can wrap the backbone
        recorder = VelocityRecorder(module.backbone, timer)
        t0 = time.perf_counter()
        trainer.fit(module, datamodule=cli.datamodule)
        fit_s = time.perf_counter() - t0
        if trainer.global_step != max_steps:
            raise SystemExit(f"fit made {trainer.global_step} steps, expected {max_steps}")
        timed = [t for i, t in enumerate(timer.times) if i >= 1 and i != profile_batch]
        step_s = statistics.median(timed)

        # ---- the same evaluations, each alone, same shapes ------------------------------------
        bb, hp = module.backbone, module.hparams
        del bb.velocity  # back to the class method (no recorder)
        batch = timer.batches[1]
        prompts, n = batch["prompts"], len(batch["prompts"])
        evals = expected_evaluations(module, n)

        # counts check against what fit actually called (timed steps only)
        expected = collections.Counter({(r, b, g): c for _, r, b, g, c in evals})
        mismatched = [i for i in range(2, 2 + args.steps) if recorder.calls[i] != expected]
        print(
            f"evaluation counts read off _losses match the recorded backbone.velocity calls: {not mismatched}"
            + ("" if not mismatched else f"\n  expected {dict(expected)}\n  recorded {dict(recorder.calls[mismatched[0]])}")
        )

        cond = bb.encode_prompts(prompts)
        latent = bb.latent_shape
        gen = torch.Generator().manual_seed(0)
        sizes = {e[2] for e in evals if not (e[1] == TEACHER and e[2] == 2 * hp.micro_batch_size and not e[3])}
        sizes |= {hp.micro_batch_size}
        xs = {b: torch.randn((b, *latent), generator=gen).to(bb.device) for b in sizes}
        conds = {b: cond[:b] for b in xs}
        roles = bb.roles

        def forward(role, b, grad):
            if role == TEACHER and b == 2 * hp.micro_batch_size and not grad:
                m = b // 2
                return lambda: (torch.no_grad()(bb.velocity_cond_uncond))(TEACHER, xs[m], 0.6, conds[m])
            if grad:
                params = roles.parameters_of(role)

                def fwd_bwd():
                    v = bb.velocity(role, xs[b], 0.6, conds[b])
                    v.float().square().mean().backward()
                    for p in params:
                        p.grad = None
                return fwd_bwd
            return lambda: torch.no_grad()(bb.velocity)(role, xs[b], 0.6, conds[b])

        rows, total = [], 0.0
        for label, role, b, grad, count in evals:
            t, _ = timeit(forward(role, b, grad), repeats=args.repeats)
            rows.append((label, role, b, count, f"{t * 1e3:.1f}", f"{t * count * 1e3:.1f}"))
            total += t * count

        t_enc, _ = timeit(lambda: bb.encode_prompts(prompts), repeats=args.repeats)
        rows.append(("prompt encoding (CLIP x2 + T5)", "-", n, 1, f"{t_enc * 1e3:.1f}", f"{t_enc * 1e3:.1f}"))
        total += t_enc
        final = torch.randn((n, *latent), generator=gen).to(bb.device)
        t_dec, _ = timeit(lambda: module.decode(final), repeats=args.repeats)
        chunks = -(-n // module.rollout_batch_size)
        rows.append((f"VAE decode ({chunks} chunk(s))", "-", n, 1, f"{t_dec * 1e3:.1f}", f"{t_dec * 1e3:.1f}"))
        total += t_dec
        images = module.decode(final)
        t_rew, _ = timeit(lambda: module._score(images, prompts, batch["metadata"]), repeats=args.repeats)

        print()
        print(table(rows, ("evaluation", "role", "batch", "count", "ms each", "ms total")))
        print()
        hpd = {k: hp[k] for k in ("num_steps", "micro_batch_size", "boundaries_per_batch", "trunc_steps")}
        print(f"step: {n} samples, rollout chunks of {module.rollout_batch_size}, {hpd}")
        print(f"steps timed:            {', '.join(f'{t * 1e3:.0f}' for t in timer.times)} ms "
              f"(first = warm-up{', profiled step excluded' if args.profile else ''}; fit total {fit_s:.1f} s)")
        print(f"sum of evaluations:     {total * 1e3:9.1f} ms")
        print(f"measured step (median): {step_s * 1e3:9.1f} ms")
        print(f"overhead ratio:         {step_s / total:9.3f}   (step / sum; target <= 1.25)")
        print(f"reward (JPEG, {n} imgs): {t_rew * 1e3:9.1f} ms   (in neither sum; step incl. reward / sum: "
              f"{step_s / (total + t_rew):.3f})")

        if timer.profiler is not None:
            print(f"\ncProfile of step {profile_batch} ({timer.times[profile_batch] * 1e3:.0f} ms under the profiler):")
            for key in ("tottime", "cumulative"):
                s = io.StringIO()
                stats = pstats.Stats(timer.profiler, stream=s)
                stats.sort_stats(key).print_stats(args.top)
                text = s.getvalue().replace(str(REPO) + "/", "")
                print(text[text.find("   ncalls"):] if "   ncalls" in text else text)


if __name__ == "__main__":
    main()
