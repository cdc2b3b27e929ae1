#!/usr/bin/env bash
# The exact commands that trained the shipped default model (gpt2_core/data/default-model), and its export to fp16.
# Held-out plays (whole files, chosen by name hash) are listed in the run's metrics.jsonl ("eval_files").
#
# History of the shipped model: the run was planned for 1000 steps; to fit the session it was stopped after
# checkpoint-500 and resumed with a 750-step schedule (so the cosine decay finishes at step 750). Both stages are
# below, in order; `--resume` continues from the last checkpoint with the same data order.
set -euo pipefail
OUT=${1:-runs/default-model}
COMMON=(--backend torch --data ../shared/corpus/shakespeare --model gpt2
  --set n_layer=4 --set n_embd=128 --set n_head=4 --set n_positions=256
  --block-size 128 --batch-size 16 --warmup-steps 100
  --learning-rate 2e-3 --min-lr-ratio 0.1 --weight-decay 0.1 --dropout 0.0
  --eval-every 250 --eval-batches 0 --save-every 250 --log-every 25 -o "$OUT" --no-progress)
if [ ! -d "$OUT/checkpoint-500" ]; then
  gpt2 train "${COMMON[@]}" --max-steps 1000 &
  pid=$!
  while [ ! -f "$OUT/checkpoint-500/trainer_state.json" ]; do sleep 10; done
  kill "$pid"; wait "$pid" || true
fi
gpt2 train "${COMMON[@]}" --max-steps 750 --resume
# export: fp16 safetensors + config + tokenizer files, into the package
rm -rf gpt2_core/data/default-model
gpt2-convert "$OUT" -o gpt2_core/data/default-model --to safetensors --dtype float16 -q
