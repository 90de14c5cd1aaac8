#!/usr/bin/env bash
# The whole llm2nifti pipeline on the bundled SmolLM2-135M, from the command line:
#   export -> ica (nilearn CanICA) -> import (components to neurons) -> mask-eval (ablate them)
#   plus recurrence (do the networks recur across the runs?)
#
# Small by default (4 runs x 256 tokens, 10 components, short evaluation): a few minutes on 2 CPU
# cores. Bigger: RUNS=8 RUN_TOKENS=512 COMPONENTS=20 examples/pipeline.sh out/full
#
# Usage: examples/pipeline.sh [OUT_DIR]
# Environment: MODEL, SITE, RUNS, RUN_TOKENS, COMPONENTS, EVAL_CONTEXT (tokens per mask-eval window)
set -euo pipefail

OUT=${1:-out/example-pipeline}
MODEL=${MODEL:-smollm2-135m}
SITE=${SITE:-mlp.out}
RUNS=${RUNS:-4}
RUN_TOKENS=${RUN_TOKENS:-256}
COMPONENTS=${COMPONENTS:-10}
EVAL_CONTEXT=${EVAL_CONTEXT:-256}

llm2nifti export --model "$MODEL" --site "$SITE" --out "$OUT/export" --max-runs "$RUNS" --run-tokens "$RUN_TOKENS" \
    --overwrite --quiet
llm2nifti ica "$OUT/export" --n-components "$COMPONENTS" --out "$OUT/ica" --overwrite
llm2nifti import "$OUT/ica/components.nii.gz" --export "$OUT/export" --out "$OUT/networks" --overwrite
llm2nifti mask-eval --model "$MODEL" --masks "$OUT/networks" --mode ablate --components C0,C1,C2 \
    --max-tokens 512 --context "$EVAL_CONTEXT" --random-controls 1 --quiet --out "$OUT/mask-eval" --overwrite
llm2nifti recurrence "$OUT/export" --subsets 2 --n-components "$COMPONENTS" --n-init 2 \
    --out "$OUT/recurrence" --overwrite --quiet

echo
echo "component maps and figures: $OUT/ica (figures/components_layers.png)"
echo "neurons per component:      $OUT/networks/selection.tsv (counts.tsv per layer)"
echo "masking effects:            $OUT/mask-eval/mask-eval.csv"
echo "recurrence table:           $OUT/recurrence/recurrence.tsv"
