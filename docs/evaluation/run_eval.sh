#!/usr/bin/env bash
# Reproduce docs/evaluation.md's numbers: lbsim eval over S1-S4 on held-back
# seeds 0..SEEDS-1 (training used trace seeds >= 50000), then the tables/plots.
set -euo pipefail
cd "$(dirname "$0")/../.."
SEEDS=${SEEDS:-5}
LBSIM=${LBSIM:-.venv/bin/lbsim}
PY=${PY:-.venv/bin/python}
for s in s1 s2 s3 s4; do
  tmp=$(mktemp -d)
  "$LBSIM" eval --scenario "$s" --seeds "$SEEDS" --quiet --out "$tmp" \
    --policy ecmp --policy wcmp --policy sed --policy lsq --policy oracle \
    --policy qmix --policy sac_gru
  mkdir -p "docs/evaluation/$s/all"
  cp "$tmp/summary.json" "$tmp/summary.md" "docs/evaluation/$s/all/"
  cp "$tmp/jct_cdf.png" "docs/evaluation/${s}_jct_cdf.png"
  cp "$tmp/weights_qmix.png" "docs/evaluation/${s}_weights_qmix.png"
  rm -rf "$tmp"
done
"$PY" docs/evaluation/make_report.py
