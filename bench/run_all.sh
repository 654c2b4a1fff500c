#!/usr/bin/env bash
# Runs every benchmark and prints their tables (use on a GPU machine to fill in the README's GPU
# figures). Each benchmark prints the backend it ran on.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
"$PY" bench/model_step.py
"$PY" bench/train_step.py
# The fastest EMB step (scan or, on a GPU, cuDNN LSTM) sets the pace the reader must keep up with.
step_ms=$("$PY" bench/train_step.py --variants emb --repeats 5 \
  | awk -F'|' '/^\| emb/ {gsub(/ /, "", $3); if ($3 ~ /^[0-9.]+$/ && (min == "" || $3 + 0 < min + 0)) min = $3}
               END {print min}')
# The reader needs TensorFlow, the end-to-end narration PyAV: skipped (and said so) without them,
# as on a GPU image that has JAX and torch but neither (ml-collections is the only package the
# step benchmarks need beyond JAX, flax, optax, orbax, torch and transformers).
if "$PY" -c 'import tensorflow, tensorflow_datasets' 2>/dev/null; then
  "$PY" bench/input_pipeline.py --step-ms "${step_ms:-340}"
else
  echo "bench/input_pipeline.py skipped: TensorFlow / tensorflow-datasets are not installed"
fi
# I3D feature extraction: the jitted network alone, and end to end (PyAV decoding) when it can.
if "$PY" -c 'import jax, sys; sys.exit(0 if jax.default_backend() == "gpu" else 1)'; then
  i3d=(--batch-sizes 1,8,32 --windows 64)
else
  i3d=(--batch-sizes 1,4 --windows 8)
fi
if "$PY" -c 'import av' 2>/dev/null; then
  "$PY" bench/extract_features.py "${i3d[@]}" --end-to-end --videos 4
else
  "$PY" bench/extract_features.py "${i3d[@]}"
fi
e2e=()
if "$PY" -c 'import av' 2>/dev/null; then
  e2e=(--end-to-end)
else
  echo "narration end to end skipped: PyAV (av) is not installed"
fi
if "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  "$PY" bench/narrate.py --architecture llava-1.5-13b --batch-sizes auto,16,64,128 --new-tokens 60 \
    ${e2e[@]+"${e2e[@]}"} --decode-workers 2,4
else
  "$PY" bench/narrate.py --architecture tiny --batch-sizes auto,4,16,32 --frames 64 --new-tokens 60 \
    ${e2e[@]+"${e2e[@]}"}
fi
