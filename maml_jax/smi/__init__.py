"""Skeletal-maturity (SMI) pipeline: ROI shards, synthetic demo data, few-shot
adaptation trials with ROI voting, clinical scores, reports, saved models.

Modules, one job each:
  errors            SMIDataError, the one exception type for bad input
  labels            the paper's 11-to-5 stage merge, user mappings, ages
  shards            the NPZ shard format (writer, validating loader)
  images            reading X-rays, aspect-kept 512x512, 64x64 ROI crops
  localize          finding the hand and the six joint ROIs in an unregistered radiograph
  prepare           label / ROI-centre CSVs or localisation -> data set (`prepare-smi`)
  preview           overlays of the ROIs found, for a person to check
  synthetic         the SYNTHETIC demo data generator and its cache
  demo_images       SYNTHETIC demo PNGs + CSVs, preview montage
  trials            support/query draws per trial, disjoint by patient
  voting            majority, averaging, weighted vote
  clinical_metrics  accuracy, MAE, within-one, quadratic kappa
  experiment        the repeated adaptation experiment
  report            report.md, metrics.json, plots
  predictor         saving/loading an adapted model; staging new images

General code it uses lives in `maml_jax`: `io` (atomic writes), `learner`
(adapt and predict), `stats` (t intervals).
"""
from maml_jax.smi.errors import SMIDataError

__all__ = ["SMIDataError"]
