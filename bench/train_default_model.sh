#!/usr/bin/env bash
# The exact command that trained the shipped default model (gpt2_core/data/default-model), then its export to fp16.
# Held-out plays (whole files, chosen by name hash) are listed in the run's metrics.jsonl.
set -euo pipefail
OUT=${1:-runs/default-model}
gpt2 train --backend torch --data ../shared/corpus/shakespeare --model gpt2 \
  --set n_layer=4 --set n_embd=128 --set n_head=4 --set n_positions=256 \
  --block-size 128 --batch-size 16 --max-steps 1000 --warmup-steps 100 \
  --learning-rate 2e-3 --min-lr-ratio 0.1 --weight-decay 0.1 --dropout 0.0 \
  --eval-every 250 --eval-batches 0 --save-every 250 --log-every 25 -o "$OUT" "${@:2}"
