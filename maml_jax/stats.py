"""Confidence intervals: the one interval formula of the project.

Every mean accuracy the project reports (meta-test episodes, adaptation trials,
the experiment tables) comes with the half-width of its 95% interval from the
t distribution with n - 1 degrees of freedom.  For the usual 600 episodes it
equals the normal approximation (1.96 sd/sqrt(n)) to 0.2%; for 5 trials it is
1.42 times wider, as it should be.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats as _scipy_stats


def t_halfwidth(values, level: float = 0.95) -> float:
  """Half-width of the t interval of the mean of `values` (NaN for fewer than 2)."""
  v = np.asarray(values, np.float64)
  n = len(v)
  if n < 2:
    return float("nan")
  return float(_scipy_stats.t.ppf(0.5 + level / 2, n - 1) * v.std(ddof=1) / math.sqrt(n))


def mean_ci(values, level: float = 0.95) -> dict:
  """Mean and the half-width of its t-distribution confidence interval.

  Returns {"mean", "ci95", "std", "n"}; ci95 and std are NaN for fewer than 2
  values.
  """
  v = np.asarray(values, np.float64)
  n = len(v)
  mean = float(v.mean()) if n else float("nan")
  std = float(v.std(ddof=1)) if n > 1 else float("nan")
  return {"mean": mean, "ci95": t_halfwidth(v, level), "std": std, "n": n}


def paired_difference(a, b, level: float = 0.95) -> dict | None:
  """The mean of a - b over the repeats both have (the same draws, in order) and
  its t interval: {"mean", "lo", "hi", "n", "verdict"}, verdict "ahead" (the
  interval above 0), "behind" (below) or "not separated by these repeats".
  None for fewer than 2 pairs."""
  n = min(len(a), len(b))
  if n < 2:
    return None
  d = mean_ci([x - y for x, y in zip(a[:n], b[:n])], level)
  lo, hi = d["mean"] - d["ci95"], d["mean"] + d["ci95"]
  verdict = "ahead" if lo > 0 else "behind" if hi < 0 else "not separated by these repeats"
  return {"mean": d["mean"], "lo": lo, "hi": hi, "n": n, "verdict": verdict}
