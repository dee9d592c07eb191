"""The paper's experiments (Tables 2-4) as a resumable grid: `run.py experiment`.

Modules, one job each:
  paper         the methods, column names and the paper's published numbers
  sources       the test data (meta-dataset test classes, SMI ROI crops) and the
                episode draw every method shares
  backbones     frozen pretrained feature extractors (cached features) and the
                scratch network
  feature_meta  MAML / FOMAML / ANIL of a head on frozen features
  meta_runs     meta-trained scratch networks: given workdirs or trained here
  methods       one predictor per (method, backbone) column
  grid          the loop over cells, each stored when done
  store         results.jsonl (atomic, resumable) and experiment.json
  tables        summaries and markdown tables in the paper's layout
  plots         accuracy against shots; per-ROI bars
  report        tables, plots, results.json and report.md
  runner        all of it for one data set (`execute`)
"""
