"""Writing an adaptation experiment's results: report.md, metrics.json, plots.

Every file goes through a temporary file and `os.replace`.  Results on the
synthetic demo data carry a SYNTHETIC banner in the report, the summary line
and metrics.json (`"synthetic": true`).
"""
from __future__ import annotations

import math
import os
from typing import Optional, Sequence

import numpy as np

from maml_jax import io as files
from maml_jax import published
from maml_jax.stats import paired_difference

SYNTHETIC_BANNER = ("**SYNTHETIC DEMO DATA.** These numbers come from generated, epiphysis-like drawings "
                    "(`maml_jax.smi.synthetic`), not from hand X-rays; they show that the pipeline runs "
                    "and say nothing about clinical accuracy.")
RULE_TEXT = {
    "majority": "majority vote (ties: summed probabilities)",
    "average": "probability averaging",
    "weighted": "weighted vote (weights from the support set)",
}


def _pct(stat: dict) -> str:
  ci = stat.get("ci95", float("nan"))
  m = 100 * stat["mean"]
  return f"{m:.1f}" if ci is None or math.isnan(ci) else f"{m:.1f} ± {100 * ci:.1f}"


def _num(stat: dict, digits: int = 2) -> str:
  ci = stat.get("ci95", float("nan"))
  m = stat["mean"]
  if m is None or math.isnan(m):
    return "n/a"
  return f"{m:.{digits}f}" if ci is None or math.isnan(ci) else f"{m:.{digits}f} ± {ci:.{digits}f}"


def _paper_rois(roi_names) -> Optional[dict]:
  """Our ROI name -> the paper's Table 4 number for the same joint (see
  `published.paper_roi`); None when no ROI pairs."""
  pairs = {n: published.paper_roi(n, j) for j, n in enumerate(roi_names)}
  pairs = {n: v[0] for n, v in pairs.items() if v is not None}
  return pairs or None


def _jsonable(x):
  """NaN -> None, numpy -> Python, recursively (JSON has no NaN)."""
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, np.ndarray):
    return _jsonable(x.tolist())
  if isinstance(x, (np.floating, float)):
    return None if math.isnan(float(x)) else float(x)
  if isinstance(x, np.integer):
    return int(x)
  if isinstance(x, np.bool_):
    return bool(x)
  return x


def plot_confusion(matrix: np.ndarray, classes: Sequence[str], title: str, path: str) -> None:
  """Row-normalised colours with the counts written in each cell."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  m = np.asarray(matrix, np.float64)
  norm = m / np.maximum(m.sum(1, keepdims=True), 1)
  fig, ax = plt.subplots(figsize=(4.8, 4.2))
  im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
  for i in range(m.shape[0]):
    for j in range(m.shape[1]):
      ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", color="white" if norm[i, j] > 0.5 else "black")
  ax.set_xticks(range(len(classes)), classes)
  ax.set_yticks(range(len(classes)), classes)
  ax.set_xlabel("predicted stage")
  ax.set_ylabel("true stage")
  ax.set_title(title, fontsize=9)
  fig.colorbar(im, ax=ax, fraction=0.046, label="share of true stage")
  fig.tight_layout()
  files.save_figure(fig, path, dpi=120)
  plt.close(fig)


def plot_roi_accuracy(per_roi: dict, rules: dict, chance: float, title: str, path: str,
                      paper: Optional[dict] = None) -> None:
  """Bars: each ROI alone (mean, 95% CI); lines: the combination rules."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  names = list(per_roi)
  means = np.array([100 * per_roi[n]["mean"] for n in names])
  cis = np.array([100 * (per_roi[n]["ci95"] if per_roi[n]["ci95"] is not None and not math.isnan(per_roi[n]["ci95"])
                         else 0.0) for n in names])
  fig, ax = plt.subplots(figsize=(6.4, 3.8))
  x = np.arange(len(names))
  ax.bar(x, means, yerr=cis, capsize=4, color="#7aa6c2", label="ROI alone (this run)")
  if paper:
    ax.scatter(x, [paper.get(n, np.nan) for n in names], marker="_", s=400, color="#b04020",
               label="paper, real X-rays (Table 4)", zorder=3)
  styles = {"majority": "-", "average": "--", "weighted": ":"}
  for rule, entry in rules.items():
    ax.axhline(100 * entry["accuracy"]["mean"], linestyle=styles.get(rule, "-"), color="black", lw=1,
               label=f"{rule} vote: {100 * entry['accuracy']['mean']:.1f}%")
  ax.axhline(100 * chance, color="grey", lw=0.8, label=f"chance {100 * chance:.0f}%")
  ax.set_xticks(x, names)
  ax.set_ylabel("query accuracy %")
  ax.set_ylim(0, 100)
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=7, loc="upper right", ncols=2)
  fig.tight_layout()
  files.save_figure(fig, path, dpi=120)
  plt.close(fig)


def smi_markdown(metrics: dict) -> str:
  """report.md for an SMI experiment (from the metrics.json content)."""
  d, p, mdl = metrics["data"], metrics["protocol"], metrics["model"]
  classes = d["classes"]
  lines = ["# Few-shot skeletal-maturity adaptation", ""]
  if metrics["synthetic"]:
    lines += ["> " + SYNTHETIC_BANNER, ""]
  counts = ", ".join(f"{c}: {n}" for c, n in zip(classes, d["counts"]))
  what = (f"shards `{d['shards']}` (made from {d['source']})" if d.get("shards")
          else d["source"])
  lines += [
      f"- Data analysed: {what} — {d['num_images']} images x {len(d['roi_names'])} ROIs "
      f"({', '.join(d['roi_names'])}); images per class {counts}.",
      f"- Model: `{mdl['workdir']}` ({mdl['network']}, input {mdl['image_size']}x{mdl['image_size']}x"
      f"{mdl['channels']}, {mdl['ways']} outputs), {mdl['steps']} inner steps, "
      f"{'one learner per ROI' if mdl['per_roi_learners'] else 'one learner over all ROIs'}.",
      f"- Protocol: {p['trials']} trials (seed {p['seed']}); per class {p['shots']} support + {p['queries']} "
      f"query images, disjoint{' and disjoint by patient' if p['patient_disjoint'] else ''}; "
      f"{p['queries'] * len(classes)} query images per trial.",
      f"- Weighted vote: {p['weights']}.",
      "", "## Image-level results (vote over ROIs)", "",
      "Mean ± 95% confidence interval over trials (t distribution).", "",
      "| rule | accuracy % | MAE (stages) | within one stage % | quadratic kappa |",
      "|---|---|---|---|---|"]
  for rule, e in metrics["rules"].items():
    lines.append(f"| {RULE_TEXT.get(rule, rule)} | {_pct(e['accuracy'])} | {_num(e['mae_stages'])} | "
                 f"{_pct(e['within_one'])} | {_num(e['quadratic_kappa'])} |")
  lines += ["", f"Chance level: {100 / len(classes):.0f}%."]
  comp = metrics.get("comparison")
  if comp:
    meta = comp["columns"].get("meta/scratch")
    lines += ["", "## Beside baselines, on the same trials", "",
              "Majority-vote accuracy % (mean ± 95% CI over the same trials; each column classifies the same "
              "support and query images).  The verdict on each baseline is the meta-learned column's paired "
              "difference from it over those trials (95% t interval).", "",
              "| method | accuracy % | meta-learned minus this, paired |", "|---|---|---|"]
    for key, e in comp["columns"].items():
      d = None if meta is None or key == "meta/scratch" else paired_difference(meta["per_repeat"], e["per_repeat"])
      verdict = "" if d is None else (f"{d['mean']:+.1f} [{d['lo']:+.1f}, {d['hi']:+.1f}]: meta-learned "
                                      f"{d['verdict']}")
      lines.append(f"| {e['label']} | {_pct({'mean': e['mean'] / 100, 'ci95': e['ci95'] / 100})} | {verdict} |")
    lines.append(f"| chance (1 / {len(classes)} stages) | {comp['chance']:.1f} | |")
  ref = published.PAPER_TABLE3.get(p["shots"])
  if ref and len(classes) == 5 and not metrics["synthetic"]:
    lines += ["", f"For context only: the paper's majority vote on its private X-rays at {p['shots']} shots was "
              f"{ref[('meta', 'scratch')]}% (meta-learned, {published.PAPER_NETWORKS['scratch']}) and "
              f"{ref[('meta', 'pretrained')]}% (meta-learned head on {published.PAPER_NETWORKS['pretrained']}); other "
              f"networks, other data and SMI stages, so not comparable with this model ({mdl['network']})."]
  paper4 = None if metrics["synthetic"] else _paper_rois(list(metrics["per_roi"]))
  lines += ["", "## Each ROI alone (the paper's Table 4)", "",
            "| ROI | accuracy % | vote weight (mean) | held-out support accuracy % |"
            + (" paper, real X-rays % |" if paper4 else ""),
            "|---|---|---|---|" + ("---|" if paper4 else "")]
  for name, e in metrics["per_roi"].items():
    held = e.get("support_heldout_accuracy_mean")
    lines.append(f"| {name} | {_pct(e)} | {e['weight_mean']:.2f} | "
                 f"{'n/a' if held is None else f'{100 * held:.1f}'} |"
                 + (f" {paper4.get(name, '–')} |" if paper4 else ""))
  if paper4:
    lines += ["", "The paper's per-ROI numbers are paired by joint: it names ROI 2 (middle finger distal joint) "
              "and ROI 4 (middle finger proximal joint) only; '–' = the paper does not say which of its ROIs "
              "this joint is."]
  conf = metrics["rules"]["majority"]["confusion"]
  lines += ["", "## Confusion matrix (majority vote, summed over trials)", "",
            "| true \\ predicted | " + " | ".join(classes) + " |", "|---" * (len(classes) + 1) + "|"]
  for c, row in zip(classes, conf):
    lines.append(f"| {c} | " + " | ".join(str(v) for v in row) + " |")
  lines += ["", "Figures: `confusion.png`, `roi_accuracy.png`.  All numbers: `metrics.json`.", ""]
  return "\n".join(lines)


SMI_REPORT_FILES = ("metrics.json", "report.md", "confusion.png", "roi_accuracy.png")
EPISODE_REPORT_FILES = ("metrics.json", "report.md")


def write_smi_report(out_dir: str, metrics: dict) -> list[str]:
  """Writes report.md, metrics.json, confusion.png, roi_accuracy.png; returns their paths."""
  os.makedirs(out_dir, exist_ok=True)
  tag = "SYNTHETIC demo data — " if metrics["synthetic"] else ""
  p = metrics["protocol"]
  paths = [os.path.join(out_dir, n) for n in SMI_REPORT_FILES]
  files.write_json(paths[0], _jsonable(metrics))
  files.write_text(paths[1], smi_markdown(metrics))
  plot_confusion(np.array(metrics["rules"]["majority"]["confusion"]), metrics["data"]["classes"],
                 f"{tag}majority vote, {p['shots']}-shot, {p['trials']} trials", paths[2])
  paper4 = None if metrics["synthetic"] else _paper_rois(list(metrics["per_roi"]))
  plot_roi_accuracy(metrics["per_roi"], metrics["rules"], 1 / len(metrics["data"]["classes"]),
                    f"{tag}accuracy of each ROI alone, {p['shots']}-shot", paths[3], paper4)
  return paths


def smi_summary(metrics: dict) -> str:
  """A few lines for the terminal."""
  p = metrics["protocol"]
  head = "SYNTHETIC demo data: " if metrics["synthetic"] else ""
  out = [f"{head}{p['shots']}-shot, {p['trials']} trials, {p['queries'] * len(metrics['data']['classes'])} "
         "query images per trial (accuracy %, mean ± 95% CI):"]
  for rule, e in metrics["rules"].items():
    out.append(f"  {rule:9s} {_pct(e['accuracy']):>14s}   MAE {_num(e['mae_stages'])}  "
               f"within-one {_pct(e['within_one'])}  kappa {_num(e['quadratic_kappa'])}")
  out.append("  per ROI: " + ", ".join(f"{n} {100 * e['mean']:.1f}" for n, e in metrics["per_roi"].items()))
  comp = metrics.get("comparison")
  if comp:
    out.append(f"{head}the same trials, majority vote (accuracy %, mean ± 95% CI):")
    for e in comp["columns"].values():
      out.append(f"  {_pct({'mean': e['mean'] / 100, 'ci95': e['ci95'] / 100}):>14s}  {e['label']}")
    out.append(f"  {comp['chance']:>14.1f}  chance (1 / {len(metrics['data']['classes'])} stages)")
    best = max(comp["columns"].values(), key=lambda e: e["mean"])
    meta = comp["columns"].get("meta/scratch")
    if meta is not None and meta["mean"] - meta["ci95"] <= comp["chance"]:
      out.append("  note: the meta-learned result is not above chance on these trials"
                 + ("; this model was not meta-trained on images like these" if meta is not best else "")
                 + ".\n  A model meta-learned on tasks of hand radiographs: `run.py experiment --table 3,4 --data "
                 "SHARDS --xray-meta 0.5` (docs/smi-results.md)")
  return "\n".join(out)


def write_episode_report(out_dir: str, metrics: dict) -> list[str]:
  """report.md and metrics.json for a meta-test (unseen classes) evaluation."""
  os.makedirs(out_dir, exist_ok=True)
  a = metrics["accuracy"]
  lines = [f"# Meta-test: {metrics['dataset']} (unseen classes)", ""]
  if metrics["synthetic"]:
    lines += ["> **SYNTHETIC data**: generated classes, not real images.", ""]
  lines += [f"- Model: `{metrics['model']['workdir']}` ({metrics['model']['network']}), "
            f"{metrics['model']['steps']} inner steps.",
            f"- {metrics['episodes']} episodes: {metrics['ways']}-way, {metrics['shots']} shots, "
            f"{metrics['queries']} queries per class, seed {metrics['seed']}.",
            f"- Accuracy: **{_pct(a)} %** (mean ± 95% CI over episodes, t distribution).", ""]
  paths = [os.path.join(out_dir, n) for n in EPISODE_REPORT_FILES]
  files.write_json(paths[0], _jsonable(metrics))
  files.write_text(paths[1], "\n".join(lines))
  return paths
