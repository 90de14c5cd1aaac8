"""Kill injection, tree fingerprints and lock-holding processes for the transactional-output tests.

A :class:`KillSwitch` installed as :data:`llm2nifti.transaction.fault_hook`
counts the file operations a command announces and raises
:class:`~llm2nifti.transaction.SimulatedKill` (a ``BaseException``: no cleanup
handler runs, as after ``SIGKILL``) before the K-th one and every later one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

import llm2nifti
from llm2nifti import transaction

PACKAGE_ROOT = Path(llm2nifti.__file__).resolve().parents[1]


class KillSwitch:
    """Fault hook: record every file operation; from the ``at``-th on, raise :class:`SimulatedKill`.

    Parameters
    ----------
    at : int, optional
        1-based index of the first operation that is not carried out; ``None`` only counts.
    """

    def __init__(self, at: int | None = None):
        self.at = at
        self.operations: list[tuple[str, Path]] = []
        self._lock = threading.Lock()  # the export writes its runs on a background thread

    @property
    def count(self) -> int:
        return len(self.operations)

    def __call__(self, kind: str, path: Path) -> None:
        with self._lock:
            self.operations.append((kind, Path(path)))
            number = len(self.operations)
        if self.at is not None and number >= self.at:
            raise transaction.SimulatedKill(f"killed before file operation {number}: {kind} {path}")


def kill_at_run(run: int) -> Callable[[str, Path], None]:
    """Fault hook: a kill just before the ``run``-th run image is renamed into place (and at every later rename).

    The runs before it are complete, so the interrupted export holds something to resume.
    """
    renamed: list[Path] = []

    def hook(kind: str, path: Path) -> None:
        if kind == "rename" and path.name.endswith(("_bold.nii.gz", "_bold.nii")):
            renamed.append(path)
            if len(renamed) >= run:
                raise transaction.SimulatedKill(f"killed before run image {len(renamed)}: {path}")

    return hook


@contextlib.contextmanager
def installed(hook: Callable[[str, Path], None] | None) -> Iterator:
    """Run the block with ``hook`` as :data:`llm2nifti.transaction.fault_hook`."""
    previous = transaction.fault_hook
    transaction.fault_hook = hook
    try:
        yield hook
    finally:
        transaction.fault_hook = previous


def count_operations(action: Callable[[], object]) -> list[tuple[str, Path]]:
    """The file operations ``action()`` announces, in order."""
    switch = KillSwitch()
    with installed(switch):
        action()
    return switch.operations


# -- trees ---------------------------------------------------------------------------------------
def tree_hash(path: Path) -> str | None:
    """Fingerprint of a directory tree (names, kinds and bytes, no times); ``None`` where nothing exists."""
    path = Path(path)
    if not path.exists():
        return None
    digest = hashlib.sha256()
    for entry in sorted(path.rglob("*")):
        name = entry.relative_to(path).as_posix()
        if entry.is_symlink():
            digest.update(f"L {name} -> {os.readlink(entry)}\n".encode())
        elif entry.is_dir():
            digest.update(f"D {name}\n".encode())
        else:
            digest.update(f"F {name} {entry.stat().st_size}\n".encode())
            digest.update(hashlib.sha256(entry.read_bytes()).digest())
    return digest.hexdigest()


def hidden_beside(out: Path) -> list[str]:
    """The hidden ``.<name>.*`` entries beside ``out`` (staging, old output, lock)."""
    out = Path(out)
    if not out.parent.is_dir():
        return []
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def restore(pristine: Path, work: Path) -> None:
    """Make ``work`` an exact copy of ``pristine`` (hidden entries included)."""
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(pristine, work, symlinks=True)


def files_of(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in Path(root).rglob("*") if p.is_file())


def without_timings(value):
    """JSON data without the keys that record how long something took (``FitSeconds``, ...)."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if not k.lower().endswith("seconds")}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def assert_same_output(got: Path, expected: Path) -> None:
    """Same files; images and arrays equal (nibabel / numpy), JSON equal as data but for timings, others byte-equal."""
    import nibabel as nib

    got, expected = Path(got), Path(expected)
    assert files_of(got) == files_of(expected), f"{got} and {expected} hold different files"
    for name in files_of(expected):
        a, b = got / name, expected / name
        if name.endswith((".nii", ".nii.gz")):
            img_a, img_b = nib.load(a), nib.load(b)
            np.testing.assert_array_equal(np.asarray(img_a.dataobj), np.asarray(img_b.dataobj), err_msg=name)
            np.testing.assert_array_equal(img_a.affine, img_b.affine, err_msg=name)
        elif name.endswith(".npz"):
            with np.load(a) as data_a, np.load(b) as data_b:
                assert sorted(data_a.files) == sorted(data_b.files), name
                for key in data_b.files:
                    np.testing.assert_array_equal(data_a[key], data_b[key], err_msg=f"{name}:{key}")
        elif name.endswith(".json"):
            assert without_timings(json.loads(a.read_text())) == without_timings(json.loads(b.read_text())), name
        elif name.endswith(".png"):
            assert a.stat().st_size > 0, name
        else:
            assert a.read_bytes() == b.read_bytes(), name


# -- other processes ---------------------------------------------------------------------------------
def without_package_init() -> str:
    """Python source after which ``import llm2nifti.<module>`` skips the package's ``__init__``.

    A child process that needs only the ground floor (``transaction``) or the
    model cache then starts in a fraction of a second instead of importing torch.
    """
    package_dir = str(Path(transaction.__file__).parent)
    return textwrap.dedent(f"""
        import sys, types
        package = types.ModuleType("llm2nifti")
        package.__path__ = [{package_dir!r}]
        sys.modules["llm2nifti"] = package
    """)


_LOCK_HOLDER = textwrap.dedent("""
    import time
    from pathlib import Path
    from llm2nifti.transaction import OutputLock
    OutputLock(Path(sys.argv[1])).acquire()
    print("locked", flush=True)
    time.sleep(600)
""")


def child_env() -> dict:
    """Environment for a child ``python`` that imports this very llm2nifti."""
    paths = [str(PACKAGE_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


@contextlib.contextmanager
def lock_holder(target: Path) -> Iterator[subprocess.Popen]:
    """Another process that holds the :class:`~llm2nifti.transaction.OutputLock` of ``target``.

    The block runs while it holds the lock; afterwards it is killed (if the
    block has not already killed it).
    """
    process = subprocess.Popen(
        [sys.executable, "-c", without_package_init() + _LOCK_HOLDER, str(target)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(),
    )
    try:
        line = process.stdout.readline()
        if line.strip() != "locked":
            process.kill()
            raise AssertionError(f"the lock holder did not start: {line!r} {process.stderr.read()}")
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        process.stdout.close()
        process.stderr.close()


def sigkill(process: subprocess.Popen) -> None:
    """SIGKILL ``process`` and reap it."""
    os.kill(process.pid, signal.SIGKILL)
    process.wait(10)
