"""The methods of the experiment grid and their names; the paper's numbers
(`maml_jax.published`) as the grid reads them."""
from __future__ import annotations

from maml_jax.published import (PAPER_COLUMNS, PAPER_NETWORKS, PAPER_ROI_JOINTS, PAPER_TABLE2,  # noqa: F401
                                PAPER_TABLE3, PAPER_TABLE4, PAPER_TABLES, paper_roi)

# Method -> label.  "base" is the paper's Base Learning (transfer learning of
# the head on the pretrained network, whole-network training on the scratch
# network); "meta" is second-order MAML; the rest go beyond the paper.
# "finetune" = fine-tuning the "meta" column's meta-learned initialisation with
# base learning's optimiser and step count; "metaxr" = MAML meta-trained on
# tasks of hand-radiograph crops from patients disjoint from the scored ones
# (SMI only; the paper's suggested "similar-looking" meta-training data).
# "agereg" / "agemeans" = the supervised answer on the same training patients
# as metaxr: a ridge regression of bone age on their frozen features, staged at
# the target's age boundaries with no support image ("agereg"), or at the
# support images' mean predicted age per stage ("agemeans").
METHODS = ("base", "meta", "fomaml", "anil", "ncm", "linprobe", "finetune", "metaxr", "agereg", "agemeans")
METHOD_LABELS = {"base": "Base", "meta": "Meta", "fomaml": "FOMAML", "anil": "ANIL",
                 "ncm": "NCM (cosine)", "linprobe": "Linear probe", "finetune": "Fine-tune meta init",
                 "metaxr": "Meta on X-ray tasks", "agereg": "Supervised age, no support",
                 "agemeans": "Supervised age, support means"}
META_METHODS = ("meta", "fomaml", "anil", "metaxr")
AGE_METHODS = ("agereg", "agemeans")
# Methods that run by default (the others are asked for with --methods).
DEFAULT_METHODS = ("base", "meta", "fomaml", "anil", "ncm", "linprobe", "finetune")
BACKBONES = ("pretrained", "scratch")
BACKBONE_LABELS = {"pretrained": "pre-trained", "scratch": "scratch"}

DATASETS = ("metadataset", "smi")
TABLE_DATASET = {2: "metadataset", 3: "smi", 4: "smi"}


def column_label(method: str, backbone: str) -> str:
  return f"{METHOD_LABELS[method]} {BACKBONE_LABELS[backbone]}"


def column_order(columns) -> list[tuple[str, str]]:
  """(method, backbone) pairs in the tables' order: the paper's four first."""
  rank = {c: i for i, c in enumerate(PAPER_COLUMNS)}
  other = [(m, b) for m in METHODS for b in BACKBONES if (m, b) not in rank]
  rank.update({c: len(PAPER_COLUMNS) + i for i, c in enumerate(other)})
  return sorted(set(columns), key=lambda c: rank[c])
