"""Export with llm2nifti, fit a task GLM with nothing but nilearn, import the z map back to neurons.

The middle step is the proof that nilearn's GLM runs *unchanged* on an
llm2nifti export: it globs file names, reads each run's ``events.tsv`` (one
row per token, ``trial_type`` = the token's character class) and calls
nilearn, exactly as on fMRI, with three choices that fit tokens (see
docs/glm.md): no haemodynamic response (``hrf_model=None``: tokens are not
BOLD), no drift model, and no signal scaling (neuron means are near zero).

Run (about a minute on 2 CPU cores; sizes are small by default)::

    python examples/nilearn_glm.py
    python examples/nilearn_glm.py --runs 8 --run-tokens 512 --out out/glm-full
"""

from __future__ import annotations

import argparse
import glob
import os
import re
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--text", default="pydoc")
    parser.add_argument("--site", default="mlp.hidden")
    parser.add_argument("--runs", type=int, default=4, help="runs to export")
    parser.add_argument("--run-tokens", type=int, default=512, help="tokens per run")
    parser.add_argument("--top-k", type=int, default=100, help="neurons imported: the largest z")
    parser.add_argument("--out", default="out/example-glm")
    args = parser.parse_args()
    out = Path(args.out)

    # 1. export: llm2nifti ------------------------------------------------------------------
    import llm2nifti

    export_dir = out / "export"
    result = llm2nifti.export(export_dir, args.model, args.text, site=args.site, run_tokens=args.run_tokens,
                              max_runs=args.runs, overwrite=True, progress=False)
    print("export:", result.summary())

    # 2. first-level GLM and fixed effects: nilearn only -------------------------------------
    import pandas as pd
    from nilearn.glm import compute_fixed_effects
    from nilearn.glm.first_level import FirstLevelModel
    from nilearn.plotting import plot_design_matrix, plot_stat_map

    runs = sorted(glob.glob(os.path.join(export_dir, "sub-*", "func", "*_run-*_bold.nii.gz")))
    mask = glob.glob(os.path.join(export_dir, "sub-*", "func", "*_desc-brain_mask.nii.gz"))[0]
    underlay = glob.glob(os.path.join(export_dir, "sub-*", "func", "*_desc-mean_sbref.nii.gz"))[0]
    effects, variances, used = [], [], 0
    for run in runs:
        events_path = re.sub(r"(_space-[A-Za-z0-9]+)?_bold\.nii\.gz$", "_events.tsv", run)  # BIDS: no space- here
        events = pd.read_csv(events_path, sep="\t", keep_default_na=False)
        events = events.loc[events["trial_type"] != "n/a", ["onset", "duration", "trial_type"]]
        model = FirstLevelModel(
            t_r=1.0,  # one token per volume
            mask_img=mask,  # the export's mask: its voxels are exactly the neurons
            hrf_model=None,  # tokens are not BOLD: one-token boxcars
            drift_model=None,  # no scanner drift
            signal_scaling=False,  # neuron means are near 0: no percent signal change
        ).fit(run, events=events)
        design = model.design_matrices_[0]
        if not {"digit", "letter"} <= set(design.columns):
            continue  # this run has no digit token
        maps = model.compute_contrast("digit - letter", output_type="all")
        effects.append(maps["effect_size"])
        variances.append(maps["effect_variance"])
        if not used:
            plot_design_matrix(design, output_file=str(out / "design_matrix.png"))
        used += 1
    _, _, _, z_map = compute_fixed_effects(effects, variances, mask)
    z_path = out / "digit_vs_letter_z.nii.gz"
    z_map.to_filename(z_path)
    plot_stat_map(z_map, bg_img=underlay, threshold=3.09, display_mode="z", cut_coords=4,
                  title="digit - letter (z)", output_file=str(out / "digit_vs_letter_z.png"))
    print(f"FirstLevelModel: {used} runs with digits of {len(runs)}, fixed effects -> {z_path}")

    # 3. import: llm2nifti --------------------------------------------------------------------
    from llm2nifti import import_components

    neurons = import_components(z_path, export=export_dir, zscore=False, top_k=args.top_k,
                                out=out / "digit-neurons", overwrite=True).mask
    layers = neurons.counts("C0")
    print(f"digit-selective: {neurons.size('C0')} neurons (largest z), most in layer {int(layers.argmax())} "
          f"-> {out / 'digit-neurons'}")


if __name__ == "__main__":
    main()
