"""Shared helpers of the benchmarks: model sizes, timing, table printing.

Nothing here is imported by the package; the benchmarks import it as a sibling module.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "configs" / "tiny.yaml"

DEFAULT_TINY = dict(
    resolution=32, num_layers=2, attention_head_dim=16, num_attention_heads=2, text_dim=32, patch_size=2
)
"""``build_tiny_sd3``'s defaults (what ``configs/tiny.yaml`` builds)."""

BIG_TINY = dict(resolution=64, num_layers=4, attention_head_dim=32, num_attention_heads=4, text_dim=32, patch_size=2)
"""Big enough that one transformer evaluation at batch 8 takes tens of ms on a CPU core pair."""

MAX_SEQUENCE_LENGTH = 64
"""T5 tokens per prompt (``TinySD3Backbone``'s default), used by every side of every comparison."""


def quiet() -> None:
    """Silence the library chatter (progress bars, warnings) so the tables stay readable."""
    warnings.filterwarnings("ignore")
    try:
        from diffusers.utils import logging as dlog

        dlog.set_verbosity_error()
        dlog.disable_progress_bar()
    except Exception:  # pragma: no cover
        pass
    try:
        from transformers.utils import logging as tlog

        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    except Exception:  # pragma: no cover
        pass
    import logging

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)


def build_pipeline(directory: Path, **config) -> Path:
    """Build a random-weight tiny SD3 pipeline into ``directory`` (offline)."""
    from tdmr1_lightning.tiny import build_tiny_sd3

    return build_tiny_sd3(directory, **config)


def describe(config: dict) -> str:
    return (
        f"res {config['resolution']}, {config['num_layers']} layers, "
        f"{config['num_attention_heads']}x{config['attention_head_dim']} heads, text_dim {config['text_dim']}, "
        f"patch {config['patch_size']}"
    )


def machine() -> str:
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (
        f"{platform.machine()} {os.cpu_count()} CPU cores (torch threads {torch.get_num_threads()}){gpu}, "
        f"torch {torch.__version__}, {datetime.date.today().isoformat()}"
    )


class OtherLoad:
    """CPU time other processes used while a benchmark ran, as a share of the machine (Linux only).

    ``/proc/stat`` gives the busy time of all CPUs; this process's own CPU time is subtracted. A share
    near 0 means the numbers were measured alone; tens of percent means others competed for the cores.
    """

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat") as f:
                fields = [float(v) for v in f.readline().split()[1:]]
        except OSError:
            return None
        hz = os.sysconf("SC_CLK_TCK")
        busy = (sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0.0)) / hz  # minus idle, iowait
        own = sum(os.times()[:4])
        return busy, own, time.perf_counter()

    def share(self) -> float | None:
        end = self._sample()
        if self.start is None or end is None:
            return None
        busy, own, wall = (e - s for e, s in zip(end, self.start))
        return max(busy - own, 0.0) / (wall * (os.cpu_count() or 1))

    def note(self) -> str:
        share = self.share()
        if share is None:
            return "CPU used by other processes: n/a"
        warn = "  <- others competed for the cores: timings are unreliable" if share > 0.10 else ""
        return f"CPU used by other processes during the run: {share:.0%} of the machine{warn}"


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timeit(fn: Callable[[], object], repeats: int = 3, warmup: int = 1) -> tuple[float, list[float]]:
    """Median wall time in seconds of ``fn()`` over ``repeats`` runs after ``warmup`` untimed runs."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def table(rows: list[tuple], header: tuple) -> str:
    """A plain fixed-width text table."""
    cells = [tuple(str(c) for c in header)] + [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)
