"""Overhead of one TDM-R1 training step over the network evaluations it must make.

Runs ``trainer.fit`` (through ``build_cli(..., run=False)`` with ``configs/tiny.yaml``) on a random
tiny SD3 built big enough that one transformer evaluation takes tens of ms, and times each training
step with a callback (``on_train_batch_start`` -> ``on_train_batch_end``; the first step is a warm-up
and is excluded). In the same run and with the same shapes it times each network evaluation the
step must make, alone:

* rollout: K generator forwards (no grad) per rollout chunk;
* per micro-batch and per boundary (the loss code: ``TDMR1Module._fake_and_generator_losses`` and
  ``_surrogate_loss``): generator forward+backward, teacher
  forward (fake-score target), fake forward+backward, teacher and surrogate-old forwards, surrogate
  forward+backward, then for the generator loss the fake forward, the teacher cond+uncond forward
  (batched as 2N), the teacher and surrogate forwards of the reward term;
* prompt encoding and VAE decoding.

The evaluations are timed between the training steps (after each step, outside the step's timing
window, on the live module), so each timed step is compared with a pass measured just before it and a
change in the machine's load hits both sides of a ratio alike; the reported ratio is the median of the
per-step ratios. The ratio ``step time / sum of evaluations`` is the step's overhead (target <= 1.25). Reward
scoring is timed and shown separately, in neither sum. While fitting, every ``backbone.velocity``
call is recorded (role, batch size, grad on or off) to check the counts read from the loss code.

    python benchmarks/epoch_overhead.py [--steps 5] [--repeats 3] [--profile]
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

import lightning as L  # noqa: E402
import torch  # noqa: E402
from _common import (  # noqa: E402
    BIG_TINY,
    REPO,
    TINY_CONFIG,
    OtherLoad,
    build_pipeline,
    describe,
    machine,
    quiet,
    sync,
    table,
    timeit,
)

from tdmr1_lightning.backbones.base import (  # noqa: E402
    FAKE,
    GENERATOR,
    SURROGATE,
    SURROGATE_OLD,
    SURROGATE_REF,
    TEACHER,
)
from tdmr1_lightning.cli import build_cli  # noqa: E402


class StepTimer(L.Callback):
    """Wall time of each training batch (one TDM-R1 step); runs ``between(step)`` after each, untimed.

    Optionally cProfiles the step ``profile_batch``.
    """

    def __init__(self, profile_batch: int | None = None, between=None) -> None:
        self.times: list[float] = []
        self.batches: list[dict] = []
        self.profile_batch = profile_batch
        self.profiler: cProfile.Profile | None = None
        self.between = between
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
        step = len(self.times) - 1
        if self.profiler is not None and step == self.profile_batch:
            self.profiler.disable()
        if self.between is not None:
            self.between(step)


class VelocityRecorder:
    """Wraps ``backbone.velocity`` to count calls by (role, batch size, grad enabled) per step."""

    def __init__(self, backbone, timer: StepTimer) -> None:
        self.calls: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
        self.sequence: dict[int, list[str]] = collections.defaultdict(list)
        self.timer = timer
        self.enabled = True
        inner = backbone.velocity

        def velocity(role, x, s, cond):
            if self.enabled:
                step = len(self.timer.batches) - 1
                self.calls[step][(role, x.shape[0], torch.is_grad_enabled())] += 1
                self.sequence[step].append(role)
            return inner(role, x, s, cond)

        backbone.velocity = velocity  # instance attribute: velocity_cond_uncond goes through it too


class Components:
    """Times each network evaluation of a step alone, with the step's shapes, on the live module."""

    def __init__(self, module, batch: dict, repeats: int) -> None:
        self.module, self.bb = module, module.backbone
        self.repeats = repeats
        self.prompts, self.metadata = batch["prompts"], batch["metadata"]
        self.n = len(self.prompts)
        self.evals = expected_evaluations(module, self.n)
        bb = self.bb
        cond = bb.encode_prompts(self.prompts)
        latent = bb.latent_shape
        gen = torch.Generator().manual_seed(0)
        sizes = {e[2] for e in self.evals if not self._is_cond_uncond(e[1], e[2], e[3])} | {
            module.batching.micro_batch_size
        }
        self.xs = {b: torch.randn((b, *latent), generator=gen).to(bb.device) for b in sizes}
        self.conds = {b: cond[:b] for b in self.xs}
        self.final = torch.randn((self.n, *latent), generator=gen).to(bb.device)
        self.images = module.decode(self.final)
        self.reward = module.rewards
        self.passes: list[dict[str, float]] = []  # one dict label -> seconds per pass

    def _is_cond_uncond(self, role, b, grad) -> bool:
        return role == TEACHER and b == 2 * self.module.batching.micro_batch_size and not grad

    def _fn(self, role, b, grad):
        bb, xs, conds = self.bb, self.xs, self.conds
        if self._is_cond_uncond(role, b, grad):
            m = b // 2
            return lambda: torch.no_grad()(bb.velocity_cond_uncond)(TEACHER, xs[m], 0.6, conds[m])
        if grad:
            params = bb.roles.parameters_of(role)

            def fwd_bwd():
                v = bb.velocity(role, xs[b], 0.6, conds[b])
                v.float().square().mean().backward()
                for p in params:
                    p.grad = None

            return fwd_bwd
        return lambda: torch.no_grad()(bb.velocity)(role, xs[b], 0.6, conds[b])

    def measure(self, warmup: int) -> None:
        times = {}
        for _label, role, b, grad, _ in self.evals:
            times[(role, b, grad)], _ = timeit(self._fn(role, b, grad), repeats=self.repeats, warmup=warmup)
        times["encode"], _ = timeit(lambda: self.bb.encode_prompts(self.prompts), repeats=self.repeats, warmup=warmup)
        times["decode"], _ = timeit(lambda: self.module.decode(self.final), repeats=self.repeats, warmup=warmup)
        times["reward"] = (
            0.0
            if self.reward is None
            else timeit(
                lambda: self.reward(self.images, self.prompts, self.metadata), repeats=self.repeats, warmup=warmup
            )[0]
        )
        self.passes.append(times)

    def total(self, times: dict) -> float:
        """Sum of the evaluations of one step (reward excluded)."""
        return sum(times[(r, b, g)] * c for _, r, b, g, c in self.evals) + times["encode"] + times["decode"]


def expected_evaluations(module, n: int) -> list[tuple[str, str, int, bool, int]]:
    """The network evaluations of one step, read off ``training_step``, ``rollout`` and the loss code.

    Returns ``(label, role, batch, with_grad, count)``; ``with_grad`` means forward + backward.
    """
    K, M, mbs, rbs = (
        module.schedule.num_steps,
        module.batching.boundaries_per_batch,
        module.batching.micro_batch_size,
        module.rollout_batch_size,
    )
    with_reward = module.rewards is not None
    rows: collections.Counter = collections.Counter()
    labels: dict[tuple, str] = {}

    def add(label, role, batch, grad, count=1):
        rows[(role, batch, grad)] += count
        labels.setdefault((role, batch, grad), label)

    for start in range(0, n, rbs):  # rollout
        add("rollout: generator fwd", GENERATOR, min(rbs, n - start), False, K)
    if module.generator_loss.trunc_steps < K and with_reward:
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
                if module.surrogate_loss.reference == "ema":
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
    parser.add_argument("--steps", type=int, default=5, help="timed training steps (after one warm-up step)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of each evaluation (median)")
    parser.add_argument("--profile", action="store_true", help="cProfile one extra step and print the top entries")
    parser.add_argument("--top", type=int, default=25, help="profile entries to print")
    args = parser.parse_args()
    quiet()
    print(f"machine: {machine()}")
    print(f"model:   tiny SD3, {describe(BIG_TINY)}, roles as LoRA, float32")
    other = OtherLoad()

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
        state: dict = {}

        def between(step: int) -> None:  # after each step, untimed: one pass over the evaluations alone
            if step == profile_batch or step == max_steps - 1:  # nothing is timed after these
                return
            recorder.enabled = False
            try:
                if "components" not in state:
                    state["components"] = Components(module, timer.batches[step], args.repeats)
                state["components"].measure(warmup=1 if step == 0 else 0)
                state.setdefault("pass_after", []).append(step)
            finally:
                recorder.enabled = True

        timer = StepTimer(profile_batch, between)
        trainer.callbacks.append(timer)
        module.configure_model()  # builds the roles now, so the recorder can wrap the backbone
        recorder = VelocityRecorder(module.backbone, timer)
        t0 = time.perf_counter()
        trainer.fit(module, datamodule=cli.datamodule)
        fit_s = time.perf_counter() - t0
        if trainer.global_step != max_steps:
            raise SystemExit(f"fit made {trainer.global_step} steps, expected {max_steps}")
        del module.backbone.velocity  # back to the class method (no recorder)
        comp: Components = state["components"]
        bb, n = module.backbone, comp.n
        timed_steps = [i for i in range(1, len(timer.times)) if i != profile_batch]
        step_s = statistics.median(timer.times[i] for i in timed_steps)

        # counts read off the loss code vs what fit actually called
        expected = collections.Counter({(r, b, g): c for _, r, b, g, c in comp.evals})
        mismatched = [i for i in timed_steps if recorder.calls[i] != expected]
        print(
            f"evaluation counts read off the loss code match the recorded backbone.velocity calls: {not mismatched}"
            + (
                ""
                if not mismatched
                else f"\n  expected {dict(expected)}\n  recorded {dict(recorder.calls[mismatched[0]])}"
            )
        )

        # Each timed step is paired with the pass of evaluations measured right before it (after the
        # previous step), so that a change in the machine's load hits both sides of a ratio alike.
        pass_of = dict(zip(state["pass_after"], comp.passes))
        pairs = [(timer.times[i], comp.total(pass_of[i - 1])) for i in timed_steps if i - 1 in pass_of]
        ratios = [t / total for t, total in pairs]
        med = {k: statistics.median(p[k] for p in comp.passes) for k in comp.passes[0]}
        total = comp.total(med)

        rows = []
        for label, role, b, grad, count in comp.evals:
            t = med[(role, b, grad)]
            rows.append((label, role, b, count, f"{t * 1e3:.1f}", f"{t * count * 1e3:.1f}"))
        rows.append(
            ("prompt encoding (CLIP x2 + T5)", "-", n, 1, f"{med['encode'] * 1e3:.1f}", f"{med['encode'] * 1e3:.1f}")
        )
        chunks = -(-n // module.rollout_batch_size)
        rows.append(
            (f"VAE decode ({chunks} chunk(s))", "-", n, 1, f"{med['decode'] * 1e3:.1f}", f"{med['decode'] * 1e3:.1f}")
        )
        t_rew = med["reward"]

        # role switches (peft adapter switching in RoleTransformers.activate): overhead, in no sum
        step_roles = recorder.sequence[timed_steps[0]]
        previous = recorder.sequence[timed_steps[0] - 1][-1]
        switches = sum(a != b for a, b in zip([previous, *step_roles[:-1]], step_roles))
        bb.roles.activate(previous)

        def switch_all():
            for role in step_roles:
                bb.roles.activate(role)

        t_sw, _ = timeit(switch_all, repeats=args.repeats)

        print()
        print(table(rows, ("evaluation", "role", "batch", "count", "ms each", "ms total")))
        print()
        hpd = {
            "num_steps": module.schedule.num_steps,
            "micro_batch_size": module.batching.micro_batch_size,
            "boundaries_per_batch": module.batching.boundaries_per_batch,
            "trunc_steps": module.generator_loss.trunc_steps,
        }
        print(f"step: {n} samples, rollout chunks of {module.rollout_batch_size}, {hpd}")
        print(
            f"steps timed:            {', '.join(f'{t * 1e3:.0f}' for t in timer.times)} ms "
            f"(first = warm-up{', profiled step excluded' if args.profile else ''}; fit total {fit_s:.1f} s)"
        )
        print(
            f"sum of evaluations:     {', '.join(f'{p[1] * 1e3:.0f}' for p in pairs)} ms"
            " (the pass before each timed step)"
        )
        print(f"per-step ratios:        {', '.join(f'{r:.3f}' for r in ratios)}")
        print(f"sum of evaluations:     {total * 1e3:9.1f} ms  (median of the passes, the table above)")
        print(f"measured step (median): {step_s * 1e3:9.1f} ms")
        print(
            f"overhead ratio:         {statistics.median(ratios):9.3f}"
            "   (median of the per-step ratios; target <= 1.25)"
        )
        best_step, best_sum = min(timer.times[i] for i in timed_steps), min(comp.total(p) for p in comp.passes)
        print(
            f"fastest step / fastest pass sum: {best_step * 1e3:.0f} / {best_sum * 1e3:.0f} ms"
            f" = {best_step / best_sum:.3f}"
            "   (less sensitive to other processes on a shared machine)"
        )
        print(f"reward scoring:         {t_rew * 1e3:9.1f} ms  ({n} images; in neither sum)")
        print(
            f"role switches ({switches} a step, RoleTransformers.activate alone): {t_sw * 1e3:.1f} ms "
            f"({t_sw / step_s:.1%} of the step; not in the sum)"
        )
        print(other.note())

        if timer.profiler is not None:
            print(f"\ncProfile of step {profile_batch} ({timer.times[profile_batch] * 1e3:.0f} ms under the profiler):")
            for title, key, restrict in (
                ("by own time", "tottime", ()),
                ("the package's functions, by cumulative time", "cumulative", ("tdmr1_lightning/",)),
            ):
                s = io.StringIO()
                stats = pstats.Stats(timer.profiler, stream=s)
                stats.sort_stats(key).print_stats(*restrict, args.top)
                text = s.getvalue().replace(str(REPO) + "/", "").replace(str(Path(torch.__file__).parents[1]) + "/", "")
                print(f"-- {title}")
                print(text[text.find("   ncalls") :].rstrip() if "   ncalls" in text else text)


if __name__ == "__main__":
    main()
