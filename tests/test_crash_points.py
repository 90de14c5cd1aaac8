"""A kill at every file operation of every command leaves the old output, or a state its recovery completes.

For each command the harness runs once cleanly, counting the N file
operations it announces through :data:`llm2nifti.transaction.fault_hook`;
then, for every K in 1..N, it restores the initial state, runs the command
with a :class:`~llm2nifti.transaction.SimulatedKill` at the K-th operation
(and every later one), and checks:

* the output is byte for byte the old one (or absent, when there was none),
  or complete and equal to a clean run's: never a mixture, never a part;
  its reader refuses the staging directory unless it holds that complete
  output;
* the documented recovery completes it: ``resume=True`` for an export whose
  staging directory holds complete runs, otherwise the same command again
  (``overwrite=True`` where an old output existed);
* after recovery the output reads back complete, equals a clean run's
  (images compared as arrays) and nothing hidden is left beside it.

ICA is swept without its figures by default, and with them (seconds per
run) under ``-m slow``.
"""

from __future__ import annotations

import math
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import make_tiny
from faults import (
    KillSwitch,
    assert_same_output,
    count_operations,
    hidden_beside,
    installed,
    restore,
    tree_hash,
)

import llm2nifti
from llm2nifti.errors import Llm2niftiError
from llm2nifti.formats.export import open_export, worth_resuming
from llm2nifti.formats.ica import open_ica
from llm2nifti.formats.maskeval import read_maskeval
from llm2nifti.formats.recurrence import open_recurrence
from llm2nifti.formats.selection import read_mask
from llm2nifti.formats.template import open_template
from llm2nifti.transaction import SimulatedKill

TEXT = "".join(f"Line {i}: the cat sat on the mat and looked at the {i % 7} birds.\n" for i in range(30))
EXPORT = dict(site="mlp.hidden", run_tokens=32, max_runs=2, progress=False)
OLD_EXPORT = dict(site="mlp.out", run_tokens=32, max_runs=2, progress=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Inputs every command needs, made once and without faults: model, text, export, maps, selection."""
    root = tmp_path_factory.mktemp("inputs")
    text = root / "text.txt"
    text.write_text(TEXT)
    model = make_tiny("llama")
    export_dir = root / "export"
    llm2nifti.export(export_dir, model, str(text), **EXPORT)
    maps = root / "maps.nii.gz"
    _random_maps(export_dir, maps)
    selection = root / "selection"
    llm2nifti.import_components(maps, export=export_dir, top_k=4, out=selection)
    return SimpleNamespace(text=str(text), model=model, export=export_dir, maps=maps, selection=selection)


def _random_maps(export_dir: Path, path: Path) -> None:
    """Two random component maps on the export's grid (what ICA or MELODIC would give)."""
    import nibabel as nib

    mask = open_export(export_dir).paths.mask
    image = nib.load(mask)
    inside = np.asarray(image.dataobj) != 0
    data = np.zeros((*inside.shape, 2), dtype=np.float32)
    data[inside] = np.random.default_rng(0).standard_normal((int(inside.sum()), 2))
    nib.save(nib.Nifti1Image(data, image.affine), path)


# -- the commands ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Command:
    """One command under the harness.

    ``run(out, overwrite)`` writes the output being tested; ``old(out)`` (when
    the sweep starts from an existing output) writes a different one of the
    same kind first; ``read(path)`` is the format's reader, which must refuse
    anything incomplete; ``resume(out)`` finishes an interrupted run.
    """

    run: Callable[[Path, bool], object]
    read: Callable[[Path], object]
    old: Callable[[Path], object] | None = None
    resume: Callable[[Path], object] | None = None


def commands(w) -> dict[str, Command]:
    def export(out, overwrite, **changes):
        return llm2nifti.export(out, w.model, w.text, **{**EXPORT, **changes}, overwrite=overwrite)

    def resume_export(out):
        return llm2nifti.export(out, w.model, w.text, **EXPORT, resume=True)

    def import_(out, overwrite, top_k=5):
        return llm2nifti.import_components(w.maps, export=w.export, top_k=top_k, out=out, overwrite=overwrite)

    def ica(out, overwrite, random_state=0, figures=False):
        return llm2nifti.run_ica(w.export, out, n_components=2, n_init=1, random_state=random_state,
                                 figures=figures, overwrite=overwrite, progress=False)

    def recurrence(out, overwrite, random_state=0):
        return llm2nifti.recurrence(w.export, out, subsets=2, n_components=2, n_init=1, random_state=random_state,
                                    figures=True, overwrite=overwrite, progress=False)

    def mask_eval(out, overwrite, random_controls=1):
        return llm2nifti.mask_eval(model=w.model, masks=w.selection, text=w.text, max_tokens=64, context=32,
                                   random_controls=random_controls, out=out, overwrite=overwrite, progress=False)

    def template(out, overwrite, site="mlp.hidden"):
        return llm2nifti.make_template(w.model, site, out, tokens=16, text=w.text, overwrite=overwrite,
                                       progress=False)

    return {
        "export": Command(export, open_export, resume=resume_export),
        "export --overwrite": Command(export, open_export, old=lambda out: export(out, False, **OLD_EXPORT),
                                      resume=resume_export),
        "import": Command(import_, read_mask, old=lambda out: import_(out, False, top_k=2)),
        "ica": Command(ica, open_ica, old=lambda out: ica(out, False, random_state=1)),
        "ica with figures": Command(partial(ica, figures=True), open_ica,
                                    old=lambda out: ica(out, False, random_state=1)),
        "recurrence": Command(recurrence, open_recurrence, old=lambda out: recurrence(out, False, random_state=1)),
        "mask-eval": Command(mask_eval, read_maskeval, old=lambda out: mask_eval(out, False, random_controls=0)),
        "template": Command(template, open_template, old=lambda out: template(out, False, site="mlp.out")),
    }


# -- checks ------------------------------------------------------------------------------------------
def staging_of(out: Path) -> Path:
    return out.with_name(f".{out.name}.partial")


def killed_state(command: Command, out: Path, old: str | None, clean: Path, k: int) -> str:
    """``"old"`` or ``"new"``: what a kill at operation ``k`` left at ``out``; anything else fails."""
    if tree_hash(out) == old:
        return "old"
    moved_aside = out.with_name(f".{out.name}.old")
    if not out.exists() and tree_hash(moved_aside) == old:
        return "old"  # the two-rename swap, between its renames: the next run restores it
    try:
        command.read(out)
        assert_same_output(out, clean)
    except (Llm2niftiError, AssertionError) as err:
        raise AssertionError(f"a kill at operation {k} left {out} neither old nor complete: {err}") from None
    return "new"


def assert_accepted_only_if_complete(read, path: Path, old: str | None, clean: Path, k: int) -> None:
    """``read(path)`` refuses ``path`` unless it is the old output or equals the clean new one."""
    if not path.exists() or tree_hash(path) == old:
        return
    try:
        read(path)
    except Llm2niftiError:
        return
    try:
        assert_same_output(path, clean)
    except AssertionError as err:
        raise AssertionError(f"after a kill at operation {k}, a reader accepts {path}, which is neither the old "
                             f"output nor the complete new one: {err}") from None


def recover(command: Command, out: Path, had_old: bool) -> str:
    staging = staging_of(out)
    if command.resume is not None and staging.is_dir() and worth_resuming(staging):
        command.resume(out)
        return "resume"
    command.run(out, had_old)
    return "overwrite" if had_old else "rerun"


def sweep(command: Command, tmp_path: Path) -> dict:
    pristine, work = tmp_path / "pristine", tmp_path / "work"
    pristine.mkdir()
    if command.old is not None:
        command.old(pristine / "out")
    restore(pristine, work)
    out = work / "out"
    old = tree_hash(out)
    n = len(count_operations(lambda: command.run(out, command.old is not None)))
    assert n > 0, "the command announced no file operation"
    clean = tmp_path / "clean"
    shutil.copytree(out, clean)
    assert old is None or tree_hash(clean) != old, "the old output must differ from the new one"
    states, recoveries = Counter(), Counter()
    for k in range(1, n + 1):
        restore(pristine, work)
        with installed(KillSwitch(k)), pytest.raises(SimulatedKill):
            command.run(out, command.old is not None)
        states[killed_state(command, out, old, clean, k)] += 1
        assert_accepted_only_if_complete(command.read, staging_of(out), old, clean, k)
        how = recover(command, out, command.old is not None)
        recoveries[how] += 1
        command.read(out)
        assert_same_output(out, clean)
        assert hidden_beside(out) == [], f"after a kill at operation {k} and {how}, leftovers beside {out}"
    return {"operations": n, "states": dict(states), "recoveries": dict(recoveries)}


def _sweep_test(name: str, world, tmp_path) -> dict:
    result = sweep(commands(world)[name], tmp_path)
    print(f"{name}: {result['operations']} file operations; killed states {result['states']}; "
          f"recoveries {result['recoveries']}")
    return result


@pytest.mark.parametrize("name", ["export", "export --overwrite", "import", "ica", "recurrence", "mask-eval",
                                  "template"])
def test_a_kill_at_any_file_operation(name, world, tmp_path):
    result = _sweep_test(name, world, tmp_path)
    if name.startswith("export"):
        assert result["recoveries"].get("resume"), "no kill left complete runs to resume"


@pytest.mark.slow
def test_a_kill_at_any_file_operation_of_ica_with_figures(world, tmp_path):
    _sweep_test("ica with figures", world, tmp_path)


# -- failures before the commit ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def old_export(world, tmp_path_factory):
    path = tmp_path_factory.mktemp("old") / "export"
    llm2nifti.export(path, world.model, world.text, **OLD_EXPORT)
    return path


def inf_mlp():
    """A tiny model whose first MLP returns infinity."""
    broken = make_tiny("llama")
    mlp = broken.model.model.layers[0].mlp
    mlp.register_forward_hook(lambda module, args, output: torch.full_like(output, math.inf))
    return broken


@pytest.mark.parametrize("problem", ["missing text", "unknown model", "run longer than the text",
                                     "non-finite activations"])
def test_a_failed_overwrite_leaves_the_old_export(problem, world, old_export, tmp_path):
    out = tmp_path / "export"
    shutil.copytree(old_export, out)
    old = tree_hash(out)
    kwargs = {"model": world.model, "text": world.text, **EXPORT}
    if problem == "missing text":
        kwargs["text"] = str(tmp_path / "no-such-text.txt")
    elif problem == "unknown model":
        kwargs["model"] = "no-such-organisation/no-such-model"
    elif problem == "run longer than the text":
        short = tmp_path / "short.txt"
        short.write_text("Too short for one run.")
        kwargs.update(text=str(short), run_tokens=64, context=32, max_runs=1)
    else:
        kwargs["model"] = inf_mlp()
    with pytest.raises(Llm2niftiError):
        llm2nifti.export(out, overwrite=True, **kwargs)
    assert tree_hash(out) == old
    assert hidden_beside(out) == []
    open_export(out)
