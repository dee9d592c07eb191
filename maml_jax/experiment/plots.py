"""Plots of the experiment (matplotlib, Agg backend, written atomically)."""
from __future__ import annotations

from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from maml_jax.experiment import paper  # noqa: E402
from maml_jax import io as files  # noqa: E402

_COLORS = dict(zip(paper.METHODS, ("tab:blue", "tab:red", "tab:orange", "tab:purple", "tab:green", "tab:brown",
                                   "tab:pink", "tab:olive", "tab:gray", "tab:cyan")))
_STYLE = {"pretrained": ("-", "o"), "scratch": ("--", "s")}


def accuracy_vs_shots(summary: dict, dataset: str, title: str, path: str) -> None:
  """Mean accuracy (error bars: 95% CI) against shots, one line per column;
  the paper's numbers as dotted lines with crosses in the same colour."""
  acc = summary["accuracy"]
  fig, ax = plt.subplots(figsize=(9.5, 4.8))
  columns = paper.column_order([(m, b) for m, b, _ in acc])
  for i, (m, b) in enumerate(columns):
    ks = sorted(k for mm, bb, k in acc if (mm, bb) == (m, b))
    mean = [acc[(m, b, k)]["mean"] for k in ks]
    ci = [0.0 if not np.isfinite(acc[(m, b, k)]["ci95"]) else acc[(m, b, k)]["ci95"] for k in ks]
    ls, mk = _STYLE[b]
    shift = 0.12 * (i - (len(columns) - 1) / 2)   # side by side, so the error bars stay readable
    ax.errorbar(np.asarray(ks) + shift, mean, yerr=ci, color=_COLORS[m], linestyle=ls, marker=mk, capsize=3,
                label=paper.column_label(m, b))
  ref = paper.PAPER_TABLES[dataset]
  for m, b in paper.PAPER_COLUMNS:
    pk = [k for k in sorted(ref) if (m, b) in ref[k]]
    ax.plot(pk, [ref[k][(m, b)] for k in pk], color=_COLORS[m], linestyle=":", alpha=0.6,
            marker="x" if b == "pretrained" else "+", markersize=8,
            label=f"paper ({paper.PAPER_NETWORKS[b].split(',')[0]}, its data): {paper.column_label(m, b)}")
  ax.set_xticks(sorted({k for _, _, k in acc} | set(ref)))
  ways = 5
  ax.axhline(100.0 / ways, color="gray", linewidth=0.8, linestyle="-.", label="chance")
  ax.set_xlabel("support images per class (shots)")
  ax.set_ylabel("query accuracy (%)")
  ax.set_title(title, fontsize=10)
  ax.set_ylim(0, 100)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
  fig.tight_layout()
  files.save_figure(fig, path, dpi=120)
  plt.close(fig)


def roi_bars(summary: dict, roi_names: Sequence[str], shots: int, title: str, path: str) -> None:
  """Per-ROI accuracy (Table 4) for every column at one shot count, with the paper's."""
  per = summary["roi_accuracy"]
  columns = paper.column_order([(m, b) for m, b, k in per if k == shots])
  r = len(roi_names)
  width = 0.8 / (len(columns) + 1)
  fig, ax = plt.subplots(figsize=(8, 4.5))
  x = np.arange(r)
  ref = [(paper.paper_roi(n, j) or (np.nan,))[0] for j, n in enumerate(roi_names)]
  ax.bar(x, ref, width, color="lightgray", edgecolor="black",
         label="paper, same joint where it says which (its data, method unstated)")
  for i, (m, b) in enumerate(columns, 1):
    stats = per[(m, b, shots)]
    ci = [s["ci95"] if np.isfinite(s["ci95"]) else 0.0 for s in stats]
    ax.bar(x + i * width, [s["mean"] for s in stats], width, yerr=ci, capsize=2, color=_COLORS[m],
           hatch="//" if b == "scratch" else None, alpha=0.85, label=paper.column_label(m, b))
  ax.set_xticks(x + 0.4 - width / 2, list(roi_names))
  ax.set_ylabel("query accuracy of the ROI alone (%)")
  ax.set_ylim(0, 100)
  ax.set_title(title, fontsize=10)
  ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  files.save_figure(fig, path, dpi=120)
  plt.close(fig)
