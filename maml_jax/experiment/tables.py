"""Summaries of the result records and the tables in the paper's layout.

A record is one finished cell of the grid (see `store`): accuracy on the
queries of one (method, backbone, shots, repeat).  Each table cell is the mean
over repeats with the half-width of its 95% confidence interval (t
distribution, as in the SMI pipeline), in percent, and the paper's number
beside it where the paper has one.
"""
from __future__ import annotations

import math
from typing import Iterable, Optional, Sequence

import numpy as np

from maml_jax.experiment import paper
from maml_jax.stats import mean_ci

MISSING = "–"


def percent_stats(values) -> dict:
  """mean_ci of accuracies given as fractions, in %, with the per-repeat values."""
  s = mean_ci([100.0 * v for v in values])
  return {**s, "per_repeat": [100.0 * v for v in values]}


def summarise(records: Iterable[dict], dataset: str) -> dict:
  """Per (method, backbone, shots): accuracy stats in %, and per ROI for SMI.

  Returns:
    {"accuracy": {(method, backbone, shots): {"mean", "ci95", "std", "n", "per_repeat"}},
     "roi_accuracy": {(method, backbone, shots): [stats per ROI]} (SMI only),
     "average_vote": {...} (SMI only)}
  Repeats are ordered by their index.
  """
  groups: dict = {}
  for r in records:
    if r["dataset"] == dataset:
      groups.setdefault((r["method"], r["backbone"], r["shots"]), []).append(r)
  out: dict = {"accuracy": {}, "roi_accuracy": {}, "average_vote": {}}
  for key, rs in sorted(groups.items()):
    rs = sorted(rs, key=lambda r: r["repeat"])
    out["accuracy"][key] = percent_stats([r["accuracy"] for r in rs])
    if rs[0].get("roi_accuracy") is not None:
      per_roi = np.array([r["roi_accuracy"] for r in rs], np.float64)    # [repeats, R]
      out["roi_accuracy"][key] = [percent_stats(per_roi[:, j].tolist()) for j in range(per_roi.shape[1])]
    if rs[0].get("average_vote_accuracy") is not None:
      out["average_vote"][key] = percent_stats([r["average_vote_accuracy"] for r in rs])
  return out


def cell(stat: Optional[dict], ref: Optional[float] = None) -> str:
  """'mean ± ci' (one decimal; no interval from a single repeat), then '(paper X)'."""
  if stat is None:
    text = MISSING
  elif stat["n"] < 2 or math.isnan(stat["ci95"]):
    text = f"{stat['mean']:.1f}"
  else:
    text = f"{stat['mean']:.1f} ± {stat['ci95']:.1f}"
  return text if ref is None else f"{text} (paper {ref:.1f})"


def _row(cells: Sequence[str]) -> str:
  return "| " + " | ".join(cells) + " |"


def _columns(summary: dict) -> list[tuple[str, str]]:
  return paper.column_order([(m, b) for m, b, _ in summary["accuracy"]])


def _shots(summary: dict) -> list[int]:
  return sorted({s for _, _, s in summary["accuracy"]})


def accuracy_table(summary: dict, dataset: str, shots: Optional[Sequence[int]] = None,
                   paper_rows: bool = True) -> str:
  """Markdown: the paper's four columns, then one column per further method.

  Rows are shot counts; every cell is 'mean ± 95% CI' in percent, with
  "(n=K)" where it has fewer repeats than the table's fullest cell.  The paper's
  numbers follow in rows of their own ("paper, K shots"): they were measured
  with the paper's networks on the paper's data (`paper.PAPER_NETWORKS`), so
  they are not set beside ours as if the columns were the same network.
  """
  refs = paper.PAPER_TABLES[dataset]
  shots = list(shots) if shots is not None else _shots(summary)
  columns = paper.column_order(list(paper.PAPER_COLUMNS) + _columns(summary))
  lines = [_row(["shots"] + [paper.column_label(m, b) for m, b in columns]),
           _row(["---:"] + ["---"] * len(columns))]
  most = max((v["n"] for v in summary["accuracy"].values()), default=0)

  def counted(stat):   # cells with fewer repeats than the table's most say how many they have
    return cell(stat) + (f" (n={stat['n']})" if stat is not None and stat["n"] < most else "")
  for k in shots:
    lines.append(_row([str(k)] + [counted(summary["accuracy"].get((m, b, k))) for m, b in columns]))
  for k in shots if paper_rows else ():
    if k in refs:
      lines.append(_row([f"paper, {k}"] + [f"*{refs[k][(m, b)]:.1f}*" if (m, b) in refs[k] else ""
                                           for m, b in columns]))
  return "\n".join(lines)


def paper_note(dataset: str) -> str:
  """What the paper's rows are (for under the table)."""
  data = "its meta-test classes" if dataset == "metadataset" else "its private hand X-rays (SMI stages)"
  return (f"*Italic* rows: the paper's numbers, measured with its networks ({paper.PAPER_NETWORKS['pretrained']}; "
          f"{paper.PAPER_NETWORKS['scratch']}) on {data}; context, not the same networks or data as the "
          "columns above.")


def roi_table(summary: dict, roi_names: Sequence[str], shots: int) -> str:
  """Markdown (Table 4): rows ROI 1..R and the majority vote, columns the methods.

  The paper's per-ROI numbers sit in their own column (the paper does not say
  which network or shot count they belong to), paired with ours by joint
  (`paper.paper_roi`); "–" where the paper does not say which joint its ROI is.
  """
  columns = _columns(summary)
  lines = [_row(["ROI", "paper (same joint)"] + [paper.column_label(m, b) for m, b in columns]),
           _row(["---", "---:"] + ["---"] * len(columns))]
  for j, name in enumerate(roi_names):
    pair = paper.paper_roi(name, j)
    ref = f"{pair[0]:.1f} ({pair[1]})" if pair else MISSING
    cells = [name, ref]
    for m, b in columns:
      per_roi = summary["roi_accuracy"].get((m, b, shots))
      cells.append(cell(per_roi[j] if per_roi is not None else None))
    lines.append(_row(cells))
  vote = [f"{len(roi_names)}-ROI vote", MISSING] + [cell(summary["accuracy"].get((m, b, shots))) for m, b in columns]
  lines.append(_row(vote))
  return "\n".join(lines)


def jsonable_summary(summary: dict) -> dict:
  """The summary with string keys 'method/backbone/shots' (for results.json)."""
  def key(k):
    return "/".join(str(x) for x in k)
  return {name: {key(k): v for k, v in part.items()} for name, part in summary.items()}
