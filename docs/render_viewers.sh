#!/usr/bin/env bash
# Regenerate the viewer screenshots of docs/viewers.md (docs/figures/viewers_*.png): the single source of them.
#
#   docs/render_viewers.sh [PART ...]   PART: niivue fsleyes fsleyes_atlas mricron mrview nilearn (default: all)
#
# Environment (defaults in brackets):
#   EXPORT     an llm2nifti export [out/smollm2; made with `llm2nifti export --out out/smollm2` if missing]
#   ICA        its ICA output [out/ica; made with `llm2nifti ica out/smollm2 --method canica --n-components 20
#              --out out/ica` if missing]
#   BRAIN      a brain-layout export for one nilearn figure [out/smollm2-brain; made with `llm2nifti export
#              --layout brain --max-runs 1 --run-tokens 128 --out out/smollm2-brain` if missing; "" for none]
#   COMPONENT  the component shown [0]
#   FIGURES    where the PNGs go [docs/figures]
#   PYTHON     a Python with llm2nifti [.venv/bin/python if present, else python3]
#   FSLEYES    the fsleyes program [fsleyes]
#
# Every viewer draws the same display ranges: the underlay's and the z-map's from `llm2nifti view` (the
# header's cal_min/cal_max where set, else robust percentiles), voxels without interpolation. A part whose
# viewer is not installed prints "skipped: ..." and the others still run; the exit status is 1 if a part
# that ran failed. Needs: chromium (niivue); fsleyes, xvfb-run (fsleyes; and imagemagick for fsleyes_atlas);
# mricron, xvfb-run, xdotool, imagemagick (mricron); mrview, xvfb-run (mrview).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's llm2nifti, also for docs/viewers_nilearn.py

PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
FSLEYES=${FSLEYES:-fsleyes}
EXPORT=${EXPORT:-out/smollm2}
ICA=${ICA:-out/ica}
BRAIN=${BRAIN-out/smollm2-brain}
COMPONENT=${COMPONENT:-0}
FIGURES=${FIGURES:-docs/figures}
PARTS=("$@")
[ ${#PARTS[@]} -gt 0 ] || PARTS=(niivue fsleyes fsleyes_atlas mricron mrview nilearn)
XVFB=(xvfb-run -a -s "-noreset -screen 0 1280x1024x24")
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$FIGURES"

llm2nifti() { "$PYTHON" -m llm2nifti "$@"; }
[ -d "$EXPORT" ] || llm2nifti export --out "$EXPORT" --quiet
[ -d "$ICA" ] || llm2nifti ica "$EXPORT" --method canica --n-components 20 --out "$ICA" --quiet
if [ -n "$BRAIN" ] && [ ! -d "$BRAIN" ]; then
    llm2nifti export --layout brain --max-runs 1 --run-tokens 128 --out "$BRAIN" --quiet
fi

# paths, display ranges and grid size, as `llm2nifti view` sees them; one 3D component for MRIcron and mrview
eval "$("$PYTHON" - "$EXPORT" "$ICA/components_z.nii.gz" "$COMPONENT" "$WORK" <<'EOF'
import shlex, sys
import nibabel as nib
import numpy as np
from nilearn.image import index_img
from llm2nifti import view
from llm2nifti.figures import find_underlay
from llm2nifti.formats.neuron_map import read_neuron_map
from llm2nifti.formats.viewer import layer_atlas

export, zmap, component, work = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
underlay, atlas, z = view(export, [zmap]).spec.volumes
index_img(zmap, component).to_filename(f"{work}/C{component}_z.nii.gz")
n_slices = nib.load(find_underlay(export)).shape[2]
neurons = read_neuron_map(f"{export}/neurons.tsv")
layer = min(12, int(neurons["layer"].max()))  # the neuron of layer 12 (or the last layer) nearest its centre
rows = np.flatnonzero(neurons["layer"] == layer)
ij = np.stack([neurons["i"][rows], neurons["j"][rows]], axis=1).astype(float)
row = rows[np.argmin(((ij - ij.mean(axis=0)) ** 2).sum(axis=1))]
values = {"UNDERLAY": find_underlay(export), "UMIN": f"{underlay.cal_min:.3g}", "UMAX": f"{underlay.cal_max:.3g}",
          "ZMIN": f"{z.cal_min:.3g}", "ZMAX": f"{z.cal_max:.3g}", "NLABELS": int(atlas.cal_max),
          "NSLICES": n_slices, "ATLAS": layer_atlas(export)[0], "ZMAP3D": f"{work}/C{component}_z.nii.gz",
          "VOXEL": ",".join(str(int(neurons[c][row])) for c in "ijk"), "VOXEL_LAYER": layer}
print("\n".join(f"{k}={shlex.quote(str(v))}" for k, v in values.items()))
EOF
)"
LUT="$EXPORT/atlas/layers.lut"
ZMAP="$ICA/components_z.nii.gz"
echo "underlay $UNDERLAY: range $UMIN .. $UMAX; $ZMAP: |z| $ZMIN .. $ZMAX; $NSLICES slices, $NLABELS layers"

have() { command -v "$1" >/dev/null 2>&1; }
skip() { echo "skipped: $1"; }

render_niivue() {
    local browser
    browser=$(command -v chromium || command -v chromium-browser || true)
    [ -n "$browser" ] || { skip "niivue (chromium is not installed)"; return; }
    llm2nifti view "$EXPORT" --maps "$ZMAP" --out "$WORK/viewer.html" --overwrite
    "$PYTHON" tests/headless_chromium.py "$WORK/viewer.html" "$FIGURES/viewers_niivue.png" 1100 760 "$VOXEL"
}

render_fsleyes() {
    have "$FSLEYES" && have xvfb-run || { skip "fsleyes (fsleyes or xvfb-run is not installed)"; return; }
    local cols rows
    cols=$("$PYTHON" -c "import math; print(math.ceil(math.sqrt($NSLICES * 1.2)))")
    rows=$(( (NSLICES + cols - 1) / cols ))
    # lightbox of every axial slice (one layer each on the grid layout); the LUT route for the layers
    "${XVFB[@]}" "$FSLEYES" render --outfile "$FIGURES/viewers_fsleyes.png" --size $((cols * 160)) $((rows * 160)) \
        --scene lightbox --zaxis 2 --sliceSpacing "$("$PYTHON" -c "print(1 / $NSLICES)")" --zrange 0 1 \
        --ncols "$cols" --nrows "$rows" --hideCursor \
        "$UNDERLAY" -dr "$UMIN" "$UMAX" -in none \
        "$ATLAS" -ot label -l "$LUT" -a 40 \
        "$ZMAP" -v "$COMPONENT" -cm red-yellow -nc blue-lightblue -un -dr "$ZMIN" "$ZMAX" -in none
}

render_fsleyes_atlas() {
    have "$FSLEYES" && have xvfb-run && have import \
        || { skip "fsleyes_atlas (fsleyes, xvfb-run or imagemagick is not installed)"; return; }
    # the atlas route in the FSLeyes window; a scratch HOME keeps the added atlas out of the user's settings,
    # and an empty FSLDIR keeps FSLeyes from asking for one
    mkdir -p "$WORK/fsl"
    FSLDIR="$WORK/fsl" HOME="$WORK" LLM2NIFTI_VOXEL="$VOXEL" \
        LLM2NIFTI_ATLAS_XML="$(realpath "$EXPORT/atlas/layers.xml")" xvfb-run -a -s "-noreset -screen 0 1500x1000x24" bash -c '
        "$1" -r docs/viewers_fsleyes_atlas.py "$2" -dr "$3" "$4" -in none "$5" -ot label -l "$6" -a 40 & pid=$!
        sleep 25
        import -window root "$7"
        kill $pid' _ "$FSLEYES" "$UNDERLAY" "$UMIN" "$UMAX" "$ATLAS" "$LUT" "$FIGURES/viewers_fsleyes_atlas.png" \
        >/dev/null 2>&1 || true
    [ -s "$FIGURES/viewers_fsleyes_atlas.png" ] || { echo "fsleyes: no window screenshot" >&2; return 1; }
    echo "fsleyes_atlas: cursor on voxel ($VOXEL), a neuron of layer $VOXEL_LAYER"
}

render_mricron() {
    have mricron && have xvfb-run && have xdotool && have import \
        || { skip "mricron (mricron, xvfb-run, xdotool or imagemagick is not installed)"; return; }
    # a fresh settings folder: 2D smoothing off ("2D Smooth all" unticked), zoom x5
    mkdir -p "$WORK/home/.mricron"
    printf '[BOOL]\nSmooth2D=0\nOverlaySmooth=0\n[INT]\nZoom=6\n' > "$WORK/home/.mricron/mricron.ini"
    # Window > Multislice: at most 24 slices, evenly spread over the layers
    local step=$(( (NSLICES + 23) / 24 ))
    printf '[STR]\nSlices=%s\n[BOOL]\nOrthoView=0\nSliceLabel=1\n[INT]\nOrient=1\nOverslicePct=0\n' \
        "$(seq -s, 1 "$step" "$NSLICES")" > "$WORK/multislice.ini"
    HOME="$WORK/home" "${XVFB[@]}" bash -c '
        mricron "$1" -s 0 -l "$2" -h "$3" -b 50 -o "$4" -c -36 -l 0.5 -h "$5" -o "$6" -c -12 -l "$7" -h "$8" \
            -m "$9" & pid=$!
        sleep 12
        multi=$(xdotool search --onlyvisible --name MultiSlice | head -1)
        [ -z "$multi" ] || { xdotool windowmove "$multi" 620 262; xdotool windowsize "$multi" 640 140; }
        sleep 3
        import -window root "${10}"
        kill $pid' _ "$UNDERLAY" "$UMIN" "$UMAX" "$ATLAS" "$NLABELS.5" "$ZMAP3D" "$ZMIN" "$ZMAX" \
        "$WORK/multislice.ini" "$WORK/mricron.png" >/dev/null 2>&1 || true
    [ -s "$WORK/mricron.png" ] || { echo "mricron: no screenshot" >&2; return 1; }
    convert "$WORK/mricron.png" -trim +repage "$FIGURES/viewers_mricron.png"
}

render_mrview() {
    have mrview && have xvfb-run || { skip "mrview (mrtrix3 or xvfb-run is not installed)"; return; }
    # ortho view; overlays: the layers (colourmap 3 = jet over 0.5 .. NLABELS + 0.5, 35 %), then the component (1 = hot, scaled 0 .. ZMAX
    # so that the neurons just above the ZMIN threshold are red, not black); the field of view holds the grid
    local fov
    fov=$("$PYTHON" -c "import nibabel as n; i = n.load('$ATLAS'); print(round(1.05 * max(i.shape[:3]) * max(i.header.get_zooms()[:3])))")
    "${XVFB[@]}" mrview "$UNDERLAY" -mode 2 -interpolation 0 -intensity_range "$UMIN,$UMAX" \
        -overlay.load "$ATLAS" -overlay.colourmap 3 -overlay.opacity 0.35 -overlay.interpolation 0 \
        -overlay.intensity "0.5,$NLABELS.5" -overlay.threshold_min 0.5 \
        -overlay.load "$ZMAP3D" -overlay.colourmap 1 -overlay.threshold_min "$ZMIN" \
        -overlay.intensity "0,$ZMAX" -overlay.interpolation 0 \
        -reset -fov "$fov" -noannotations -size 900,900 \
        -capture.folder "$WORK" -capture.prefix mrview -capture.grab -exit >/dev/null 2>&1
    mv "$WORK/mrview0000.png" "$FIGURES/viewers_mrview.png"
}

render_nilearn() {
    "$PYTHON" docs/viewers_nilearn.py "$EXPORT" "$ICA" "$COMPONENT" "$FIGURES" ${BRAIN:+"$BRAIN"}
}

status=0
for part in "${PARTS[@]}"; do
    if "render_$part"; then
        echo "done: $part"
    else
        echo "failed: $part" >&2
        status=1
    fi
done
exit $status
