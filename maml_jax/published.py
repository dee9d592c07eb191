"""The paper's published numbers: Min & Kang (2018), Tables 2-4.

One home that the skeletal-maturity report (`smi/report.py`) and the
experiment grid (`experiment/`) both read.  The paper reports no intervals;
its SMI data are private hand X-rays, so its Table 3 and 4 numbers are
context, not targets, for any other data.  Columns are (method, backbone)
pairs in the grid's names: "base" is the paper's Base Learning, "meta" its
second-order MAML; "pretrained" its frozen VGG16, "scratch" its scratch7.
"""
from __future__ import annotations

import re

# The paper's four columns, in its order.
PAPER_COLUMNS = (("base", "pretrained"), ("base", "scratch"), ("meta", "pretrained"), ("meta", "scratch"))


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
  if re.fullmatch(r"roi\d", name) and int(name[3:]) - 1 < len(PAPER_TABLE4):
    return PAPER_TABLE4[int(name[3:]) - 1], f"paper ROI {name[3:]}"
  for i, (joint, pattern) in PAPER_ROI_JOINTS.items():
    if re.search(pattern, name.lower()):
      return PAPER_TABLE4[i], f"paper ROI {i + 1} ({joint})"
  return None

PAPER_TABLES = {"metadataset": PAPER_TABLE2, "smi": PAPER_TABLE3}
