"""Measure the tables of docs/mask-eval.md: network sets against every kind of control, on a bundled model.

For one model (``--model``), this script

1. exports ``--runs`` runs of 512 tokens of the built-in corpus at ``mlp.out`` (or reuses ``OUT/export``);
2. runs CanICA (K = 10, ``--n-init``) and the seed's temporal FastICA (K = 10), each imported at z > 3.6;
3. evaluates, with ``llm2nifti.mask_eval`` (``ablate``, held-out text), the CanICA union, the seed-style
   set (the FastICA union) and the variance-ranked reference, under each control kind, with
   ``--controls`` controls on ``--tokens`` held-out tokens;
4. with ``--acceptance``, first the default mask-eval of the CanICA union (20 controls, 4096 tokens,
   variance-ranked reference included), timed;

and prints markdown rows for the docs (every output stays under ``OUT`` for inspection).

    python docs/measure_controls.py --model smollm2-135m --out out/controls-smollm2 --runs 16 --acceptance
    python docs/measure_controls.py --model gemma3-270m --out out/controls-gemma --runs 4
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

import llm2nifti
from llm2nifti.evaluation.controls import CONTROL_KINDS


def _load() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def _stage(path: Path, mark: str, make) -> Path:
    if not (path / mark).is_file():
        make(path)
    return path


def _row(label: str, row: dict, control: str, tokens: int) -> str:
    null, described = row["null"], row["set"]
    flags = []
    text = " ".join(row["warnings"])
    for word, flag in (("multimodal", "multimodal"), ("widened", "widened"), ("strata", "crowded"),
                       ("dominated", "dominated"), ("not disjoint", "not disjoint")):
        if word in text:
            flags.append(flag)

    def f(value, spec="+.3f"):
        return "n/a" if value is None else format(value, spec)

    return (f"| {label} | {row['n_neurons']} | {f(described['variance_share'], '.3f')} | {described['n_massive']} | "
            f"{control} | {null['n']} | {tokens} | {f(row['delta_loss'])} | {f(null['median'])} "
            f"[{f(null['q05'])}, {f(null['q95'])}] | {f(null['p_value'], '.3f')} | {f(null['excess'])} | "
            f"{', '.join(flags)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--out", required=True)
    parser.add_argument("--runs", type=int, default=16)
    parser.add_argument("--n-init", type=int, default=10)
    parser.add_argument("--controls", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--acceptance", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    loaded = llm2nifti.load_model(args.model, progress=False)
    export = _stage(out / "export", "dataset_description.json", lambda p: llm2nifti.export(
        p, loaded, "pydoc", run_tokens=512, max_runs=args.runs, progress=False))
    canica = _stage(out / "ica-canica", "ica.json", lambda p: llm2nifti.run_ica(
        export, p, n_components=10, n_init=args.n_init, random_state=0, progress=False))
    seed = _stage(out / "ica-fastica-temporal", "ica.json", lambda p: llm2nifti.run_ica(
        export, p, method="fastica-temporal", n_components=10, random_state=0, progress=False))
    sets = {}
    for name, ica in (("CanICA union", canica), ("seed-style set", seed)):
        sets[name] = _stage(out / f"networks-{ica.name}", "import.json",
                            lambda p, ica=ica: llm2nifti.import_components(
                                ica / "components.nii.gz", export=export, threshold=3.6, sign="positive", out=p))
    rows = []
    if args.acceptance:
        started, load = time.perf_counter(), _load()
        result = llm2nifti.mask_eval(loaded, sets["CanICA union"], export=export, out=out / "eval-acceptance",
                                     overwrite=True, progress=False)
        seconds = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
        print(f"acceptance: default mask-eval, {seconds:.0f} s wall, load {load} -> {_load()}, "
              f"peak RSS so far {peak:.2f} GB; baseline loss {result.baseline['loss']:.3f}")
        for row in result.conditions:
            rows.append(_row(f"{row['name']} (*acceptance*)", row, "layer-variance", result.settings["NumTokens"]))
    for name, mask in sets.items():
        for control in CONTROL_KINDS:
            started, load = time.perf_counter(), _load()
            result = llm2nifti.mask_eval(loaded, mask, export=export, control=control,
                                         random_controls=args.controls, max_tokens=args.tokens,
                                         variance_ranked=name == "CanICA union",
                                         out=out / f"eval-{name[:6]}-{control}",
                                         overwrite=True, progress=False)
            print(f"{name} / {control}: {time.perf_counter() - started:.0f} s, load {load}; "
                  f"baseline {result.baseline['loss']:.3f}")
            for row in result.conditions:
                label = name if row["name"] == "union" else row["name"]
                rows.append(_row(label, row, control, result.settings["NumTokens"]))
    print("| set | neurons | var share | massive | control | n | tokens | delta loss | null median [5 %, 95 %] "
          "| p | excess | warnings |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
