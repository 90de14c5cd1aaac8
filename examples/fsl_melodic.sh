#!/usr/bin/env bash
# FSL MELODIC group ICA on an llm2nifti export, then `llm2nifti import` of melodic_IC.nii.gz.
#
# MELODIC runs as on fMRI: temporal concatenation of the runs (-a concat), the export's brain mask
# (-m; its voxels are exactly the neurons), no brain extraction (--nobet: the "brain" is synthetic),
# no background threshold beyond the mask, the TR from a run's JSON sidecar, and the export's mean
# activation as background image. melodic_IC.nii.gz holds z-statistic maps, so the import does not
# z-score again (--no-zscore) and keeps z > 3.
#
# Usage:   examples/fsl_melodic.sh [OUT_DIR] [N_COMPONENTS]
#          (exports SmolLM2-135M, 4 runs x 256 tokens, into OUT_DIR/export first unless one is there)
# Exit status:
#   0  done
#   3  FSL's `melodic` is not installed: nothing was run (install FSL, https://fsl.fmrib.ox.ac.uk)
#   1  any other error
set -euo pipefail

OUT=${1:-out/example-melodic}
DIM=${2:-10}
EXPORT="$OUT/export"

if ! command -v melodic >/dev/null 2>&1; then
    echo "fsl_melodic.sh: FSL's melodic is not installed (not on PATH), so this example cannot run;" \
         "install FSL and source \$FSLDIR/etc/fslconf/fsl.sh. Nothing was done (exit 3)." >&2
    exit 3
fi
command -v llm2nifti >/dev/null 2>&1 || { echo "fsl_melodic.sh: llm2nifti is not on PATH" >&2; exit 1; }

mkdir -p "$OUT"
if [ ! -f "$EXPORT/dataset_description.json" ]; then
    llm2nifti export --out "$EXPORT" --max-runs 4 --run-tokens 256 --overwrite --quiet
fi

FUNC=$(dirname "$(ls "$EXPORT"/sub-*/func/*_desc-brain_mask.nii.gz)")
MASK=$(ls "$FUNC"/*_desc-brain_mask.nii.gz)
MEAN=$(ls "$FUNC"/*_desc-mean_sbref.nii.gz)
ls "$FUNC"/*_run-*_bold.nii.gz > "$OUT/runs.txt"
FIRST_SIDECAR=$(head -n 1 "$OUT/runs.txt" | sed 's/\.nii\.gz$/.json/')
TR=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["RepetitionTime"])' "$FIRST_SIDECAR")

echo "melodic: $(wc -l < "$OUT/runs.txt") runs, TR $TR s, $DIM components"
rm -rf "$OUT/melodic.gica"
melodic -i "$OUT/runs.txt" -o "$OUT/melodic.gica" -a concat -m "$MASK" --nobet --bgthreshold=0 \
    --tr="$TR" -d "$DIM" --bgimage="$MEAN" --report --Oall

llm2nifti import "$OUT/melodic.gica/melodic_IC.nii.gz" --export "$EXPORT" --no-zscore --threshold 3 \
    --out "$OUT/networks" --overwrite
echo "networks -> $OUT/networks/neurons.tsv"
