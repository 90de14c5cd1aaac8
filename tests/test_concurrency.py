"""Two real processes writing the same output: one writes it, the other is refused (or, for the cache, waits).

Both children import llm2nifti first and then wait at a start gate, so they
reach the lock within milliseconds of each other; the one that takes it
holds it a little longer than its work needs (a fault hook that sleeps at its
first file operation), so the other always arrives while it is held.
"""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import pytest
from faults import child_env, hidden_beside, without_package_init

TEXT = "Sphinx of black quartz, judge my vow. How vexingly quick daft zebras jump! " * 8

#: Runs ``llm2nifti <args>`` once the gate file exists, holding its output's lock for HOLD seconds first.
_GATED_CLI = r"""
import pathlib, sys, time
from llm2nifti import transaction
from llm2nifti.cli import main

gate, hold, args = pathlib.Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
held = []

def hold_the_lock(kind, path):
    if not held:
        held.append(path)
        time.sleep(hold)

transaction.fault_hook = hold_the_lock
print("ready", flush=True)
while not gate.exists():
    time.sleep(0.005)
sys.argv = ["llm2nifti", *args]
main()
"""

#: Builds the cache entry argv[3] through ``populate_cache`` once the gate file exists; logs builds to argv[4].
_GATED_CACHE = r"""
import os, pathlib, sys, time
from llm2nifti.models import populate_cache

gate, hold, target, builds = pathlib.Path(sys.argv[1]), float(sys.argv[2]), *map(pathlib.Path, sys.argv[3:5])

def build(staging):
    with open(builds, "a") as log:
        log.write(f"{os.getpid()}\n")
    (staging / "builder").write_text(str(os.getpid()))
    time.sleep(hold)
    (staging / "weights").write_text("complete")

print("ready", flush=True)
while not gate.exists():
    time.sleep(0.005)
print(populate_cache(target, build), flush=True)
"""


@dataclass
class Child:
    pid: int
    code: int | None = None
    stdout: str = ""
    stderr: str = ""
    seconds: float = math.inf  # from the opening of the gate to its exit


def run_together(script: str, gate, hold: float, *arg_lists, timeout: float = 120) -> list[Child]:
    """Start one child per argument list and open the gate when all are ready."""
    processes = [subprocess.Popen([sys.executable, "-c", script, str(gate), str(hold), *map(str, args)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
                 for args in arg_lists]
    children = [Child(process.pid) for process in processes]
    try:
        for process in processes:
            line = process.stdout.readline()
            assert line.strip() == "ready", f"a child did not start: {line!r} {process.stderr.read()}"
        gate.write_text("go")
        opened = time.monotonic()

        def wait(process, child):
            child.stdout, child.stderr = process.communicate(timeout=timeout)
            child.code, child.seconds = process.returncode, time.monotonic() - opened

        waiters = [threading.Thread(target=wait, args=pair) for pair in zip(processes, children)]
        for waiter in waiters:
            waiter.start()
        for waiter in waiters:
            waiter.join()
        return children
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "text.txt"
    path.write_text(TEXT)
    return path


SETTINGS = {"mlp.hidden": "float32", "mlp.out": "int16"}
#: Seconds the process that takes the lock holds it before doing its work.
HOLD = 3.0


def test_two_exports_into_one_directory(tmp_path, tiny_llama_dir, text_file):
    out = tmp_path / "export"
    arg_lists = [["export", "--model", tiny_llama_dir, "--text", text_file, "--run-tokens", "32", "--max-runs", "2",
                  "--site", site, "--dtype", dtype, "--out", out, "--quiet"] for site, dtype in SETTINGS.items()]
    children = run_together(_GATED_CLI, tmp_path / "gate", HOLD, *arg_lists)
    assert sorted(child.code for child in children) == [0, 1], children
    (winner, site), = [(child, site) for child, site in zip(children, SETTINGS) if child.code == 0]
    (refused,) = [child for child in children if child.code == 1]
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), refused.stderr
    assert "is being written by another llm2nifti" in lines[0]
    assert f"process {winner.pid} on {socket.gethostname()}, started " in lines[0]
    assert refused.seconds < HOLD < winner.seconds, "the refused export waited for the lock instead of failing"

    from llm2nifti.formats.export import open_export

    export = open_export(out)
    assert export.record.grid.site == site
    record = json.loads((out / "export.json").read_text())
    assert (record["Site"], record["DataType"], record["NumRuns"]) == (site, SETTINGS[site], 2)
    for run in export.runs:
        sidecar = json.loads(export.paths.sidecar(run).read_text())
        assert (sidecar["Site"], sidecar["DataType"], sidecar["Run"]) == (site, SETTINGS[site], run)
    assert len(list(out.rglob("*_bold.nii.gz"))) == 2
    assert hidden_beside(out) == []


def test_two_processes_filling_one_cache_entry(tmp_path):
    """The model cache's lock waits (it does not refuse): one process builds, both get the entry."""
    target = tmp_path / "cache" / "models" / "tiny-0123456789abcdef"
    builds = tmp_path / "builds.log"
    script = without_package_init() + _GATED_CACHE
    children = run_together(script, tmp_path / "gate", HOLD, [target, builds], [target, builds])
    for child in children:
        assert child.code == 0, child.stderr
        assert child.stdout.splitlines()[-1] == str(target)
        assert child.seconds > HOLD  # the one that did not build waited for the one that did
    (builder,) = builds.read_text().split()
    assert int(builder) in {child.pid for child in children}
    assert (target / "builder").read_text() == builder
    assert (target / "weights").read_text() == "complete"
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]
