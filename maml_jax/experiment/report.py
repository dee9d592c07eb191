"""The experiment's outputs: tables, plots, results.json and report.md.

Everything is rebuilt from the results store and experiment.json, so the
report of a resumed run is the report of the whole run.  Results on the
synthetic SMI demo data carry a SYNTHETIC banner wherever they show.
"""
from __future__ import annotations

import math
import os
from typing import Optional

import numpy as np

from maml_jax.stats import paired_difference
from maml_jax.experiment import paper, plots, store, tables
from maml_jax import io as files

SYNTHETIC_BANNER = ("**SYNTHETIC DEMO DATA.** The SMI numbers below come from generated, epiphysis-like "
                    "drawings (`maml_jax.smi.synthetic`), not from hand X-rays: they show that the "
                    "pipeline runs and say nothing about clinical accuracy.")
TITLES = {"metadataset": "Table 2: the meta-dataset's unseen classes (5-way)",
          "smi": "Table 3: {stages}, {rois} ({ways} classes)"}
# Learn from the support set (finetune: from the meta init), or, the supervised
# age columns, conventionally from the same other patients' labels as metaxr.
BASELINES = ("base", "ncm", "linprobe", "finetune") + paper.AGE_METHODS


def title(dataset: str, settings: dict) -> str:
  if dataset != "smi":
    return TITLES[dataset]
  names = settings.get("roi_names") or []
  rois = ("whole hand, one view" if len(names) == 1 else f"{len(names)}-ROI majority vote") if names else "ROI vote"
  # Stages cut from bone age are not the paper's skeletal-maturity (SMI) stages: say which.
  stages = "bone-age stages" if "bone-age" in str(settings.get("data", "")) else "skeletal maturity"
  return TITLES["smi"].format(stages=stages, rois=rois, ways=settings.get("ways", 5))


def _jsonable(x):
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, (float, np.floating)):
    return None if math.isnan(float(x)) else float(x)
  if isinstance(x, np.integer):
    return int(x)
  return x


def _fmt(stat: dict) -> str:
  return tables.cell(stat)


def _overlap(a: dict, b: dict) -> Optional[bool]:
  if a["n"] < 2 or b["n"] < 2:
    return None
  return abs(a["mean"] - b["mean"]) <= a["ci95"] + b["ci95"]


def _versus(label_a: str, a: dict, label_b: str, b: dict) -> str:
  """One verdict on two columns: from the paired difference when both were
  scored on the same draws (the grid's columns are), else from their intervals."""
  paired = _paired(a, b)
  if paired:
    return f"{label_a} {_fmt(a)} vs {label_b} {_fmt(b)}: {paired}"
  d = a["mean"] - b["mean"]
  ov = _overlap(a, b)
  sep = ("" if ov is None else "; the 95% intervals overlap, so the repeats do not separate them" if ov
         else "; the 95% intervals do not overlap")
  return f"{label_a} {_fmt(a)} vs {label_b} {_fmt(b)}: {d:+.1f} points{sep}"


def _paired(a: dict, b: dict) -> str:
  """Mean difference a - b over the repeats both have (same draws), with its 95% CI."""
  d = paired_difference(a["per_repeat"], b["per_repeat"])
  if d is None:
    return ""
  return (f"paired difference over the same {d['n']} draws {d['mean']:+.1f} points, 95% CI [{d['lo']:+.1f}, "
          f"{d['hi']:+.1f}]: {d['verdict']}")


def winner_lines(summary: dict) -> list[str]:
  """Per shot count: the best meta-learned column against the best baseline."""
  acc = summary["accuracy"]
  out = []
  for k in sorted({s for _, _, s in acc}):
    at = {(m, b): v for (m, b, s), v in acc.items() if s == k}
    meta = [c for c in at if c[0] in paper.META_METHODS]
    base = [c for c in at if c[0] in BASELINES]
    if not meta or not base:
      continue
    bm = max(meta, key=lambda c: at[c]["mean"])
    bb = max(base, key=lambda c: at[c]["mean"])
    out.append(f"- **{k} shots**: best meta-learned {paper.column_label(*bm)} {_fmt(at[bm])} vs best baseline "
               f"{paper.column_label(*bb)} {_fmt(at[bb])}; {_paired(at[bm], at[bb])}")
  return out


def comparisons(summary: dict) -> list[str]:
  """Measured statements per shot count: meta vs base per backbone, the best
  simple baseline vs the best of base/meta, and the best column."""
  acc = summary["accuracy"]
  out = []
  for k in sorted({s for _, _, s in acc}):
    at = {(m, b): v for (m, b, s), v in acc.items() if s == k}
    if not at:
      continue
    lines = []
    for b in paper.BACKBONES:
      if ("meta", b) in at and ("base", b) in at:
        lines.append(_versus(paper.column_label("meta", b), at[("meta", b)],
                             paper.column_label("base", b), at[("base", b)]))
    simple = [c for c in at if c[0] in ("ncm", "linprobe")]
    learned = [c for c in at if c[0] in ("base",) + paper.META_METHODS]
    if simple and learned:
      bs = max(simple, key=lambda c: at[c]["mean"])
      bl = max(learned, key=lambda c: at[c]["mean"])
      lines.append("best simple baseline vs best base/meta-learned column: "
                   + _versus(paper.column_label(*bs), at[bs], paper.column_label(*bl), at[bl]))
    best = max(at, key=lambda c: at[c]["mean"])
    lines.append(f"highest mean: {paper.column_label(*best)} ({_fmt(at[best])})")
    out += [f"- **{k} shots**"] + [f"  - {line}" for line in lines]
  return out


def _settings_lines(entry: dict, columns) -> list[str]:
  """The settings of a data set's cells; the meta-dataset only where a column
  of these cells learned from it."""
  s, models = entry.get("settings", {}), entry.get("models", {})
  uses_meta = any(m in paper.META_METHODS + ("finetune",) and m != "metaxr" for m, _ in columns) or \
      any(b == "pretrained" for _, b in columns) and "supervised" in str(s.get("pretrained_backbone"))
  lines = [f"- {k}: `{v}`" for k, v in s.items() if k != "meta_dataset" or uses_meta]
  lines += [f"- model of {k}: `{v}`" for k, v in sorted(models.items())]
  return lines


def write(out_dir: str) -> list[str]:
  """Writes tables, plots, results.json and report.md for every data set in the
  store; returns the paths written."""
  st = store.ResultsStore(out_dir)
  saved = store.settings_of(out_dir)
  written, sections, results = [], [], {"datasets": {}, "runs": saved.get("runs", [])}
  for dataset in paper.DATASETS:
    records = st.for_dataset(dataset)
    if not records:
      continue
    entry = saved.get(dataset, {})
    summary = tables.summarise(records, dataset)
    synthetic = any(r.get("synthetic") for r in records)
    table = tables.accuracy_table(summary, dataset)
    number = 2 if dataset == "metadataset" else 3
    tag = " [SYNTHETIC data]" if synthetic else ""
    heading = title(dataset, entry.get("settings", {}))
    note = tables.paper_note(dataset)
    md_path = os.path.join(out_dir, f"table{number}.md")
    files.write_text(md_path, f"# {heading}{tag}\n\n{table}\n\n{note}\n")
    plot_path = os.path.join(out_dir, f"accuracy_vs_shots_{dataset}.png")
    plots.accuracy_vs_shots(summary, dataset, heading + tag, plot_path)
    written += [md_path, plot_path]
    sec = [f"## {heading}{tag}", ""]
    if synthetic:
      sec += [SYNTHETIC_BANNER, ""]
    sec += [f"Data analysed: {entry.get('settings', {}).get('data', '?')}", "",
            "Accuracy on the query images, % (mean ± 95% CI over repeats):", "",
            table, "", note, "", f"![accuracy against shots]({os.path.basename(plot_path)})", "",
            "Which method wins (meta-learned = MAML adaptation of a meta-learned initialisation; baselines = "
            "base learning, NCM, linear probe, fine-tuning the meta-learned initialisation, and the supervised "
            "bone-age model on the same training patients where it ran):", ""]
    sec += winner_lines(summary) + ["", "Measured comparisons:", ""] + comparisons(summary) + [""]
    res = {"synthetic": synthetic, "settings": entry, "summary": tables.jsonable_summary(summary)}
    if dataset == "smi" and summary["roi_accuracy"]:
      roi_names = entry.get("settings", {}).get("roi_names") or [f"roi{j + 1}" for j in range(6)]
      t4 = []
      for k in sorted({s for _, _, s in summary["roi_accuracy"]}):
        t4 += [f"**{k} shots**", "", tables.roi_table(summary, roi_names, k), ""]
      kmax = max(s for _, _, s in summary["roi_accuracy"])
      roi_plot = os.path.join(out_dir, "roi_accuracy_smi.png")
      plots.roi_bars(summary, roi_names, kmax, f"Table 4: each ROI alone, {kmax} shots{tag}", roi_plot)
      t4_path = os.path.join(out_dir, "table4.md")
      files.write_text(t4_path, f"# Table 4: accuracy of each ROI alone{tag}\n\n" + "\n".join(t4))
      written += [t4_path, roi_plot]
      sec += [f"## Table 4: accuracy of each ROI alone{tag}", "",
              "Each ROI's own prediction (the same adapted models as Table 3; no vote), % of query images. "
              "The paper does not say which network or shot count its per-ROI numbers belong to; they are "
              "paired with ours by joint where the paper names it (ROI 2: middle finger distal joint, ROI 4: "
              "middle finger proximal joint).", ""]
      sec += t4 + [f"![per-ROI accuracy]({os.path.basename(roi_plot)})", ""]
      res["roi_names"] = list(roi_names)
    sec += ["Settings of these cells:", ""] + _settings_lines(entry, [(m, b) for m, b, _ in summary["accuracy"]]) + [""]
    sections += sec
    results["datasets"][dataset] = res
  runs = ["## Runs", ""] + [f"- `{r.get('command')}`: {r.get('dataset')}, {r.get('cells')} new cells, "
                            f"{r.get('seconds')} s wall ({r.get('started')})" for r in saved.get("runs", [])]
  head = ["# Few-shot experiment: base learning, meta-learning and simple baselines", "",
          "Reproduces the protocol of Min & Kang (2018), Tables 2-4: every method classifies exactly the same "
          "support/query draws (drawn once per shots and repeat from the seed).  Cells: mean ± 95% CI "
          "(t distribution) over repeats.  Columns: `Base` = conventional training on the support set "
          "(pre-trained: FC head on frozen pretrained features; scratch: the whole network from random "
          "init); `Meta` = second-order MAML (pre-trained: head meta-learned on frozen features); `FOMAML` = "
          "first-order MAML; `ANIL` = only the head adapts in the inner loop; `NCM (cosine)` = nearest class "
          "mean; `Linear probe` = L2-regularised logistic regression (NCM and probe on frozen features: "
          "pretrained, or a randomly initialised scratch network's); `Fine-tune meta init` = the Meta column's "
          "initialisation trained on the support set with base learning's optimiser and step count; `Meta on "
          "X-ray tasks` = a head meta-learned on tasks of hand-radiograph crops (finer bone-age bins) from "
          "patients set aside for it (`xray-split.json`; or another pool's, or an X-ray model's training "
          "patients), never scored; `Supervised age, no support` = ridge regression of bone age on the same "
          "patients' frozen features (an image's ROIs together), the stage read off the predicted age at the "
          "stage boundaries, no support image used; `Supervised age, support means` = the same predicted age, "
          "each query given the stage whose support images' mean predicted age is nearest.", "",
          "Labelled data each column uses besides the support set: Base, NCM, Linear probe: none (the "
          "pre-trained ones: ImageNet, through the frozen weights).  Meta, FOMAML, ANIL, Fine-tune meta init: "
          "the meta-dataset's meta-train classes (and ImageNet for pre-trained).  Meta on X-ray tasks: ImageNet "
          "and the bone ages of the set-aside patients' radiographs; the supervised age columns: the same.", ""]
  results_path = os.path.join(out_dir, "results.json")
  files.write_json(results_path, _jsonable(results))
  report_path = os.path.join(out_dir, "report.md")
  files.write_text(report_path, "\n".join(head + sections + runs) + "\n")
  return written + [results_path, report_path]
