#!/usr/bin/env bash
# The next shipped model (issue 15 item 4): the workflow's own train rule on full MNIST, a wider
# bottom level than today's (channel_mults [1, 2, 3]: 1.66 M parameters, 448 MFLOP per image against
# 1.05 M and 371) and a longer EMA (0.9995), resumed from this folder's resume_state.pt. Run from a
# checkout with the package installed (make test or make run has made .venv); THREADS=2 on an idle
# machine; STEPS and COOLDOWN set the budget and the linear cool-down at its end (the same run
# resumes under a new budget). The state goes back here:
#   shipped-model-training/run.sh            # trains until killed or train.steps is reached
#   shipped-model-training/run.sh --save     # copies results/train/resume_state.pt back here
set -euo pipefail
cd "$(dirname "$0")/.."
here=shipped-model-training
if [[ "${1:-}" == "--save" ]]; then
  cp results/train/resume_state.pt "$here/resume_state.pt"
  exit 0
fi
mkdir -p results/train
if [[ -f "$here/resume_state.pt" && ! -f results/train/resume_state.pt ]]; then
  cp "$here/resume_state.pt" results/train/resume_state.pt
fi
threads="${THREADS:-1}"
# bfloat16 halves a step on CPUs with bf16 units (AMX, avx512_bf16) and on GPUs, but is ten times
# slower on one without (an AVX2-only AMD EPYC here): PRECISION=float32 there.
precision="${PRECISION:-bfloat16}"
steps="${STEPS:-24000}"
cooldown="${COOLDOWN:-7000}"
exec .venv/bin/snakemake --cores "$threads" --rerun-incomplete results/train/best_model.pt \
  --config checkpoint=train threads="$threads" 'data={source: mnist}' 'model={channel_mults: [1, 2, 3]}' \
  "train={steps: $steps, cooldown_steps: $cooldown, batch_size: 128, ema_decay: 0.9995, val_every: 500, val_size: 1000, save_every: 250, precision: $precision}"
