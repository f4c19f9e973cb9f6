"""``tdmr1 evaluate``: sample a prompt set from a checkpoint (or the teacher), score it, print a per-tag table.

The generator (its EMA by default) samples at K steps without guidance, exactly as in validation and
``predict``; the teacher samples at N steps (default :data:`TEACHER_DEFAULT_STEPS`) with
classifier-free guidance (default: the config's ``model.generator_loss.guidance_scale``). Every sample is scored by
the evaluation rewards (the config's ``model.eval_rewards``, else ``model.rewards``, or ``--rewards``),
and the scores are summarised per tag (the prompt metadata's ``tag``, e.g. GenEval's, else one row
``all``):

* every reward: the mean score of the valid samples with its standard error;
* rewards whose ``details`` carry a per-sample ``correct`` (GenEval): the fraction correct with a 95%
  Wilson interval, and GenEval's overall score, the unweighted mean over tags (:func:`mean_over_tags`).

The intervals treat every image as independent; with several images a prompt they are somewhat
optimistic. Outputs: the Markdown table on stdout, and with ``--out``: ``results.json`` (every number
plus what produced it), ``table.md``, ``samples.jsonl`` (one line a sample) and, on request, images.

Sampling noise is drawn per sample from ``(seed, prompt index, image index)`` on the CPU, so the images
do not depend on ``--batch-size`` or the device's random number generator.

Modules: :mod:`.stats` (intervals, summaries), :mod:`.tables` (Markdown), :mod:`.sampling` (sampling and
scoring a prompt set), :mod:`.callback` (``EvaluateOnFit``) and :mod:`.command` (``tdmr1 evaluate``).
"""

from .callback import EvaluateOnFit
from .command import build_parser, main, run
from .sampling import TEACHER_DEFAULT_STEPS, evaluate_samples, images_per_prompt_by_tag, sample_images, sample_noise
from .stats import EvaluationError, mean_and_se, mean_over_tags, summarise, wilson_interval
from .tables import format_comparison, format_table

__all__ = [
    "TEACHER_DEFAULT_STEPS",
    "EvaluateOnFit",
    "EvaluationError",
    "build_parser",
    "evaluate_samples",
    "format_comparison",
    "format_table",
    "images_per_prompt_by_tag",
    "main",
    "mean_and_se",
    "mean_over_tags",
    "run",
    "sample_images",
    "sample_noise",
    "summarise",
    "wilson_interval",
]
