"""Export with llm2nifti, run CanICA with nothing but nilearn, import the maps back to neurons.

The middle step is the proof that nilearn runs *unchanged* on an llm2nifti
export: it only globs file names and calls nilearn, exactly as on fMRI
(the export's brain mask as the mask, nilearn's default 6 mm smoothing, which
is the identity at 24 mm voxels).

Run (a few minutes on 2 CPU cores: 2 to 6 minutes measured, depending on other load; sizes are
small by default)::

    python examples/nilearn_canica.py
    python examples/nilearn_canica.py --runs 8 --run-tokens 512 --n-components 20 --out out/canica-full
"""

from __future__ import annotations

import argparse
import glob
import os
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--site", default="mlp.out")
    parser.add_argument("--runs", type=int, default=4, help="runs to export")
    parser.add_argument("--run-tokens", type=int, default=256, help="tokens per run")
    parser.add_argument("--n-components", type=int, default=10)
    parser.add_argument("--out", default="out/example-nilearn")
    args = parser.parse_args()
    out = Path(args.out)

    # 1. export: llm2nifti ------------------------------------------------------------------
    import llm2nifti

    export_dir = out / "export"
    result = llm2nifti.export(export_dir, args.model, site=args.site, run_tokens=args.run_tokens,
                              max_runs=args.runs, overwrite=True, progress=False)
    print("export:", result.summary())

    # 2. group ICA: nilearn only -------------------------------------------------------------
    from nilearn import plotting
    from nilearn.decomposition import CanICA

    runs = sorted(glob.glob(os.path.join(export_dir, "sub-*", "func", "*_run-*_bold.nii.gz")))
    mask = glob.glob(os.path.join(export_dir, "sub-*", "func", "*_desc-brain_mask.nii.gz"))[0]
    underlay = glob.glob(os.path.join(export_dir, "sub-*", "func", "*_desc-mean_sbref.nii.gz"))[0]
    canica = CanICA(
        mask=mask,  # the export's mask: its voxels are exactly the neurons
        n_components=args.n_components,
        standardize="zscore_sample",  # nilearn's default (True), under its future name
        random_state=0,
    )
    canica.fit(runs)
    components = out / "canica_components.nii.gz"
    canica.components_img_.to_filename(components)
    plotting.plot_prob_atlas(canica.components_img_, bg_img=underlay, title="CanICA components",
                             output_file=str(out / "canica_components.png"))
    print(f"CanICA: {args.n_components} components from {len(runs)} runs -> {components}")

    # 3. import: llm2nifti --------------------------------------------------------------------
    from llm2nifti import import_components

    networks = import_components(components, export=export_dir, threshold=2.0, sign="positive",
                                 out=out / "networks", overwrite=True).mask
    for name in networks.components:
        layers = networks.counts(name)
        print(f"  {name}: {networks.size(name):4d} neurons, most in layer {int(layers.argmax())}")
    print(f"neurons per component -> {out / 'networks' / 'selection.tsv'}")


if __name__ == "__main__":
    main()
