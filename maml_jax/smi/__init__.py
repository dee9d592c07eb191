"""Skeletal-maturity (SMI) pipeline: ROI shards, synthetic demo data, few-shot
adaptation trials with ROI voting, clinical scores, reports, saved models.

Modules, one job each:
  errors            SMIDataError, the one exception type for bad input
  files             atomic writes and checksums
  labels            the paper's 11-to-5 stage merge, user mappings, ages
  shards            the NPZ shard format (writer, validating loader)
  images            reading X-rays, 512x512 (aspect kept), 64x64 ROI crops
  localize          finding the hand, its fingertips and six joint ROIs; whole-hand view
  preview           overlay PNGs of located ROIs and a contact sheet
  prepare           label / ROI-centre CSVs -> data set (`prepare-smi`)
  synthetic         the SYNTHETIC demo data generator and its cache
  demo_images       SYNTHETIC demo PNGs + CSVs, preview montage
  trials            support/query draws per trial, disjoint by patient
  learner           ROI crops -> network input; jitted adapt/predict
  voting            majority, averaging, weighted vote
  clinical_metrics  accuracy, MAE, within-one, quadratic kappa, t intervals
  experiment        the repeated adaptation experiment
  report            report.md, metrics.json, plots
  predictor         saving/loading an adapted model; staging new images
"""
from maml_jax.smi.errors import SMIDataError

__all__ = ["SMIDataError"]
