"""Moved to :mod:`tdmr1_lightning.evaluation`; this alias stays for one release.

Configs that name ``tdmr1_lightning.evaluate.EvaluateOnFit`` keep working (with a warning); write
``tdmr1_lightning.evaluation.EvaluateOnFit``.
"""

import warnings

from .evaluation import *  # noqa: F403
from .evaluation import __all__  # noqa: F401

warnings.warn(
    "tdmr1_lightning.evaluate moved to tdmr1_lightning.evaluation (e.g. tdmr1_lightning.evaluation.EvaluateOnFit)",
    FutureWarning,
    stacklevel=2,
)
