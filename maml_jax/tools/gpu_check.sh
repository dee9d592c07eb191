#!/usr/bin/env bash
# GPU check: the paper workload's seconds per meta-batch on the accelerator, and
# the projected time of the paper's full 10,000 meta-batches.
#   bash maml_jax/tools/gpu_check.sh        (from the repository root, on a GPU machine)
# Installs JAX's CUDA build when the current jaxlib sees no GPU.  Uses random
# data for the benchmark and SYNTHETIC classes for the short meta-train run, so
# it needs no dataset.
set -euo pipefail
cd "$(dirname "$0")/../.."
python -m pip install -q -r requirements.txt
if ! python -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')" 2>/dev/null; then
  python -m pip install -q "jax[cuda12]>=0.10"
fi
python -c "import jax; print('backend', jax.default_backend(), jax.devices())"
python run.py bench paper --repeats 5 | tee /tmp/gpu_bench.txt
W=$(mktemp -d)
python run.py meta-train --preset paper-scratch --dataset synthetic --steps 60 --log-every 20 \
  --val-every 0 --checkpoint-every 1000 --test-episodes 20 --workdir "$W" --no-progress
python - "$W" /tmp/gpu_bench.txt <<'PY'
import json, re, sys
rows = [json.loads(l) for l in open(f"{sys.argv[1]}/metrics.jsonl")]
a, b = rows[0], rows[-1]   # the first log step includes compilation: time from it on
sec = (b["train_seconds"] - a["train_seconds"]) / (b["step"] - a["step"])
bench = float(re.search(r"sec_per_meta_batch=([0-9.]+)", open(sys.argv[2]).read()).group(1))
print(f"bench paper: {bench:.4f} s per meta-batch -> 10,000 meta-batches in {bench * 1e4 / 3600:.2f} h")
print(f"meta-train paper-scratch (synthetic data): {sec:.4f} s per meta-batch -> "
      f"10,000 meta-batches in {sec * 1e4 / 3600:.2f} h")
PY
