#!/usr/bin/env bash
# Reproduce docs/evaluation/suite/: S1-S4 (trace seeds 0..SEEDS-1; training uses
# trace seeds >= 50000) and every held-out generator family (held-out seeds
# 2e9.., parameter region outside training's) x every policy, SEEDS runs each.
# Add a policy with POLICIES="... name=CHECKPOINT".
set -euo pipefail
cd "$(dirname "$0")/../.."
SEEDS=${SEEDS:-5}
JOBS=${JOBS:-2}
LBSIM=${LBSIM:-.venv/bin/lbsim}
POLICIES=${POLICIES:-ecmp wcmp sed lsq p2c wrr_latency prequal oracle qmix sac_gru}
args=()
for p in $POLICIES; do args+=(--policy "$p"); done
"$LBSIM" suite --out docs/evaluation/suite --seeds "$SEEDS" --jobs "$JOBS" --quiet \
  --title "Evaluation suite: S1-S4 and the held-out families (issue 10 foundation)" "${args[@]}"
