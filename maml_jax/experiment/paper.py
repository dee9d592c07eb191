"""The methods of the experiment grid, their names, and the paper's numbers.

The published accuracies (%) are those of Min & Kang (2018), Tables 2-4.  The
paper reports no intervals; its SMI
data are private hand X-rays, so its Table 3 and 4 numbers are context, not
targets, for any other data.
"""
from __future__ import annotations

# Method -> label.  "base" is the paper's Base Learning (transfer learning of
# the head on the pretrained network, whole-network training on the scratch
# network); "meta" is second-order MAML; the rest go beyond the paper.
# "finetune" = fine-tuning the "meta" column's meta-learned initialisation with
# base learning's optimiser and step count; "metaxr" = MAML meta-trained on
# tasks of hand-radiograph crops from patients disjoint from the scored ones
# (SMI only; the paper's suggested "similar-looking" meta-training data).
METHODS = ("base", "meta", "fomaml", "anil", "ncm", "linprobe", "finetune", "metaxr")
METHOD_LABELS = {"base": "Base", "meta": "Meta", "fomaml": "FOMAML", "anil": "ANIL",
                 "ncm": "NCM (cosine)", "linprobe": "Linear probe", "finetune": "Fine-tune meta init",
                 "metaxr": "Meta on X-ray tasks"}
META_METHODS = ("meta", "fomaml", "anil", "metaxr")
# Methods that run by default (the others are asked for with --methods).
DEFAULT_METHODS = ("base", "meta", "fomaml", "anil", "ncm", "linprobe", "finetune")
BACKBONES = ("pretrained", "scratch")
BACKBONE_LABELS = {"pretrained": "pre-trained", "scratch": "scratch"}

# The paper's four columns, in its order.
PAPER_COLUMNS = (("base", "pretrained"), ("base", "scratch"), ("meta", "pretrained"), ("meta", "scratch"))

DATASETS = ("metadataset", "smi")
TABLE_DATASET = {2: "metadataset", 3: "smi", 4: "smi"}


def _table(rows):
  return {shots: dict(zip(PAPER_COLUMNS, values)) for shots, values in rows}


# Table 2: the meta-dataset's unseen classes, 5-way, 15 queries per class.
PAPER_TABLE2 = _table([(5, (51.9, 27.3, 73.3, 53.3)),
                       (10, (58.6, 31.2, 76.0, 59.9)),
                       (20, (69.3, 35.9, 81.9, 80.0))])
# Table 3: hand X-rays, 5 maturity classes, 6-ROI majority vote.
PAPER_TABLE3 = _table([(5, (42.4, 23.1, 47.1, 53.3)),
                       (10, (45.7, 31.4, 57.1, 56.6)),
                       (20, (50.6, 38.6, 69.3, 65.9))])
# Table 4: each ROI alone (the paper does not say for which network or shot count).
PAPER_TABLE4 = (63.0, 45.9, 50.0, 69.9, 59.9, 50.0)
# The paper names the joint of two of its ROIs only: ROI 2 = middle finger
# distal joint, ROI 4 = middle finger proximal joint.  Our per-ROI numbers are
# paired with the paper's by joint, through these patterns over our ROI names.
PAPER_ROI_JOINTS = {1: ("middle finger distal joint", r"middle.*(dip|distal)|(dip|distal).*middle"),
                    3: ("middle finger proximal joint", r"middle.*(pip|proximal)|(pip|proximal).*middle")}
# The paper's networks (its Table 3 numbers belong to these, on its private X-rays).
PAPER_NETWORKS = {"pretrained": "VGG16 ImageNet convolutions, frozen", "scratch": "scratch7 at 64x64, full width"}


def paper_roi(name: str, j: int) -> tuple[float, str] | None:
  """The paper's Table 4 number for our ROI `name` (at position j), with the
  reason for the pairing, or None when the paper's ROI is not known to be
  the same joint.  Generic names roi1..roi6 pair with the paper's ROI 1..6."""
  import re
  if re.fullmatch(r"roi\d", name) and int(name[3:]) - 1 < len(PAPER_TABLE4):
    return PAPER_TABLE4[int(name[3:]) - 1], f"paper ROI {name[3:]}"
  for i, (joint, pattern) in PAPER_ROI_JOINTS.items():
    if re.search(pattern, name.lower()):
      return PAPER_TABLE4[i], f"paper ROI {i + 1} ({joint})"
  return None

PAPER_TABLES = {"metadataset": PAPER_TABLE2, "smi": PAPER_TABLE3}


def column_label(method: str, backbone: str) -> str:
  return f"{METHOD_LABELS[method]} {BACKBONE_LABELS[backbone]}"


def column_order(columns) -> list[tuple[str, str]]:
  """(method, backbone) pairs in the tables' order: the paper's four first."""
  rank = {c: i for i, c in enumerate(PAPER_COLUMNS)}
  other = [(m, b) for m in METHODS for b in BACKBONES if (m, b) not in rank]
  rank.update({c: len(PAPER_COLUMNS) + i for i, c in enumerate(other)})
  return sorted(set(columns), key=lambda c: rank[c])
