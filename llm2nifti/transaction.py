"""Writing outputs so that nothing incomplete ever looks complete.

Three layers, used by every command and by the model cache:

Atomic files
    :func:`atomic_path` yields a hidden temporary name beside the target and
    renames it into place only when the block succeeds; :func:`write_text` and
    :func:`write_json` (strict JSON: no NaN or infinity) build on it.
:class:`OutputLock`
    One writer per output path. The lock is ``.<name>.lock`` beside the output,
    held with ``flock`` and holding the holder's process id, host and start
    time. The kernel releases it when its process dies, so a stale lock (a
    killed process) is detected by finding holder information in a file
    nobody locks, and is taken over.
:class:`OutputTransaction`
    A command builds its whole output in ``.<name>.partial`` beside ``out``
    and swaps it into place in one step only when complete: with
    ``overwrite``, the old output is replaced only at that swap, so a failure
    at any earlier point leaves it as it was. Leftovers of killed runs (a
    staging directory, or the old output of an interrupted swap) are recovered
    or removed by the next run on the same output, which it says.

Every create, rename and delete goes through :func:`file_operation`, which
tests use to inject a kill before the K-th operation.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import math
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from .console import log
from .errors import DamagedFileError, IncompleteOutputError, Llm2niftiError, OutputExistsError, OutputLockedError

PARTIAL_SUFFIX = ".part"
STAGING_SUFFIX = ".partial"
OLD_SUFFIX = ".old"
LOCK_SUFFIX = ".lock"


# -- fault injection -------------------------------------------------------------------
class SimulatedKill(BaseException):
    """Raised by a test's fault hook to stand for SIGKILL: no cleanup handler catches it."""


#: Test hook ``hook(kind, path)`` called before every file operation (``create``, ``rename``, ``delete``).
fault_hook: Callable[[str, Path], None] | None = None


def file_operation(kind: str, path: Path) -> None:
    """Announce a file operation (the point where tests may inject a kill)."""
    if fault_hook is not None:
        fault_hook(kind, Path(path))


# -- atomic files ------------------------------------------------------------------------
def partial_path(path: Path) -> Path:
    """Hidden temporary name, in the same directory, that no glob for the real name matches."""
    return path.with_name(f".{path.name}{PARTIAL_SUFFIX}")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; rename it to ``path`` only if the block succeeds.

    On an error the temporary file is removed; after a kill it stays, hidden,
    and :func:`remove_partials` clears it.
    """
    path = Path(path)
    tmp = partial_path(path)
    file_operation("create", tmp)
    try:
        yield tmp
        file_operation("rename", path)
        os.replace(tmp, path)
    except Exception:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def _plain(value):
    """numpy scalars and arrays, paths and tuples as JSON values; refuses what JSON cannot hold."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def json_text(obj) -> str:
    """Strict JSON (``allow_nan=False``): a NaN reaching here is a bug, not a file to write."""
    return json.dumps(obj, indent=2, allow_nan=False, default=_plain) + "\n"


def write_json(path: str | Path, obj) -> None:
    write_text(path, json_text(obj))


def finite_or_none(value):
    """``value`` as a float, or ``None`` where it is NaN or infinite (JSON has no such numbers)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _refuse_constant(name):
    raise ValueError(f"{name} is not allowed in strict JSON")


def read_input(path: str | Path, what: str) -> bytes:
    """The bytes of an input file; a missing file or a directory is a :class:`DamagedFileError` naming ``what``."""
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DamagedFileError(f"{path}: no such file (expected a {what})") from None
    except IsADirectoryError:
        raise DamagedFileError(f"{path}: is a directory, expected a {what}") from None


def read_json(path: str | Path, what: str = "JSON file") -> dict:
    """A JSON object from ``path``; a missing, unreadable or malformed file is a :class:`DamagedFileError`."""
    raw = read_input(path, what)
    try:
        obj = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError) as err:
        raise DamagedFileError(f"{path}: not a valid {what} ({err})") from None
    if not isinstance(obj, dict):
        raise DamagedFileError(f"{path}: not a valid {what} (expected a JSON object)")
    return obj


def make_dirs(path: Path) -> list[Path]:
    """Create ``path`` and its missing parents; returns the directories created, outermost first."""
    path = Path(path)
    missing = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise OutputExistsError(f"{probe} exists and is not a directory")
    for directory in reversed(missing):
        file_operation("create", directory)
        directory.mkdir(exist_ok=True)
    return list(reversed(missing))


def remove_tree(path: Path) -> None:
    file_operation("delete", path)
    shutil.rmtree(path)


def rename(source: Path, target: Path) -> None:
    file_operation("rename", target)
    os.replace(source, target)


def remove_partials(directory: str | Path) -> int:
    """Delete leftovers of interrupted atomic writes below ``directory``; return how many."""
    leftovers = list(Path(directory).rglob(f".*{PARTIAL_SUFFIX}"))
    for leftover in leftovers:
        file_operation("delete", leftover)
        leftover.unlink()
    return len(leftovers)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


# -- the lock ---------------------------------------------------------------------------------
class OutputLock:
    """Exclusive right to write ``target``, held as ``flock`` on ``.<name>.lock`` beside it.

    Parameters
    ----------
    target : Path
        The output path (it need not exist; its parent must).
    wait : bool
        Block until the lock is free (the model cache) instead of failing at once.
    """

    def __init__(self, target: Path, *, wait: bool = False):
        self.target = Path(target)
        self.path = self.target.with_name(f".{self.target.name}{LOCK_SUFFIX}")
        self.wait = wait
        self._fd: int | None = None
        self.took_over: dict | None = None

    @staticmethod
    def _read(fd: int) -> dict:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = os.read(fd, 4096)
        try:
            holder = json.loads(raw.decode("utf-8")) if raw.strip() else {}
        except (UnicodeDecodeError, ValueError):
            holder = {}
        return holder if isinstance(holder, dict) else {}

    @classmethod
    def _holder(cls, fd: int, patience: float = 1.0) -> dict:
        """The holder's information, waiting a moment for a holder that has the lock but not yet written it."""
        deadline = time.monotonic() + patience
        holder = cls._read(fd)
        while not holder and time.monotonic() < deadline:
            time.sleep(0.01)
            holder = cls._read(fd)
        return holder

    def acquire(self) -> OutputLock:
        import fcntl

        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
            except BlockingIOError:
                holder = self._holder(fd)
                os.close(fd)
                who = (f"process {holder.get('pid', '?')} on {holder.get('host', '?')}, "
                       f"started {holder.get('started', '?')}")
                raise OutputLockedError(
                    f"{self.target} is being written by another llm2nifti ({who}); wait for it to finish or "
                    f"write elsewhere (if that process is gone, delete {self.path})"
                ) from None
            try:
                same_file = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same_file = False
            if not same_file:  # the holder released and removed it between our open and flock: retry
                os.close(fd)
                continue
            previous = self._read(fd)
            if previous:
                self.took_over = previous
                log.info("took over the lock of %s from process %s on %s (started %s), which is gone",
                         self.target, previous.get("pid", "?"), previous.get("host", "?"),
                         previous.get("started", "?"))
            holder = {"pid": os.getpid(), "host": socket.gethostname(),
                      "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, json.dumps(holder).encode())
            self._fd = fd
            return self

    def release(self, *, clean: bool = True) -> None:
        """Give the lock up; ``clean=False`` leaves the file as a killed process would."""
        if self._fd is None:
            return
        if clean:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()  # while still holding it: a waiter then retries on a fresh file
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.release(clean=exc_type is None or not issubclass(exc_type, SimulatedKill))


# -- the transaction ----------------------------------------------------------------------
class OutputTransaction:
    """Build an output directory beside its target and swap it in only when complete.

    Parameters
    ----------
    out : str or Path
        The output directory.
    what : str
        What the output is, for messages (``"export"``, ``"ICA output"``).
    is_output : callable
        ``is_output(path)`` tells whether an existing directory is an output
        of this kind (complete or not): only those are replaced by ``overwrite``.
    overwrite : bool
        Replace an existing output (at the final swap only).
    resume : bool
        Adopt the staging directory of an interrupted run (:attr:`adopted`);
        one with nothing worth keeping is removed and the run starts over
        (and may then replace the output, as the interrupted run was asked to).
    resumable : bool
        Whether this kind of output can be resumed (the export); a staging
        directory left by a failed or killed run is then kept for ``resume``
        when it is worth keeping, and removed otherwise.
    worth_keeping : callable, optional
        For resumable outputs: ``worth_keeping(staging)`` tells whether a
        failed run left something to resume; default: anything is.

    Notes
    -----
    Use it as a context manager; inside, write into :attr:`staging` and call
    :meth:`commit` as the last step. An exception before that removes the
    staging directory this run made (unless it is worth resuming), leaves any
    old output untouched and releases the lock. A
    :class:`SimulatedKill` leaves everything as ``SIGKILL`` would; the next
    run on the same output recovers from every such state (see :meth:`_swap`).
    """

    def __init__(self, out, *, what: str, is_output: Callable[[Path], bool], overwrite: bool = False,
                 resume: bool = False, resumable: bool = False,
                 worth_keeping: Callable[[Path], bool] | None = None):
        self.out = Path(out).expanduser().absolute()
        self.what = what
        self.is_output = is_output
        self.overwrite = overwrite
        self.resume = resume
        self.resumable = resumable
        self.worth_keeping = worth_keeping
        self.staging = self.out.with_name(f".{self.out.name}{STAGING_SUFFIX}")
        self.old = self.out.with_name(f".{self.out.name}{OLD_SUFFIX}")
        self.lock = OutputLock(self.out)
        self.adopted = False
        self.restarted = False
        self.committed = False
        self._made_parents: list[Path] = []
        self._made_staging = False

    # -- entering: checks, lock, recovery -------------------------------------------
    def __enter__(self) -> OutputTransaction:
        if self.out.exists() and not self.out.is_dir():
            raise OutputExistsError(f"output path {self.out} exists and is not a directory")
        self._made_parents = make_dirs(self.out.parent)
        try:
            self.lock.acquire()
            self._recover()
            self._check_target()
            if not self.adopted:
                file_operation("create", self.staging)
                self.staging.mkdir()
                self._made_staging = True
        except BaseException as err:
            self._leave(err)
            raise
        return self

    def _recover(self) -> None:
        """Undo what killed runs left: an interrupted swap, and a staging directory not worth resuming."""
        self._finish_swap()
        if self.staging.exists():
            self._recover_staging()
        elif self.resume and self.resumable and not self._has_output():
            raise OutputExistsError(f"nothing to resume in {self.out}: it holds no interrupted {self.what}")

    def _finish_swap(self) -> None:
        """``.<name>.old`` is discardable once ``out`` exists (see :meth:`_swap`), else it is the output."""
        if not self.old.exists():
            return
        if self.out.exists():
            log.info("removing %s, left by an interrupted swap", self.old)
            remove_tree(self.old)
        else:
            log.info("restoring %s from an interrupted swap", self.out)
            rename(self.old, self.out)

    def _recover_staging(self) -> None:
        keep = self._worth_keeping()
        if keep and self.resume:
            self.adopted = True
            log.info("resuming the interrupted %s in %s", self.what, self.staging)
            return
        if keep and not self.overwrite:
            raise OutputExistsError(
                f"an interrupted {self.what} into {self.out} is kept in {self.staging}; finish it with `resume` "
                "or discard it with `overwrite`"
            )
        self.restarted = self.resume
        log.info("removing %s, left by an interrupted run%s", self.staging,
                 "; nothing in it to resume, starting over" if self.resume else "")
        remove_tree(self.staging)

    def _worth_keeping(self) -> bool:
        return self.resumable and (self.worth_keeping is None or self.worth_keeping(self.staging))

    def _has_output(self) -> bool:
        return self.out.is_dir() and any(self.out.iterdir())

    def _check_target(self) -> None:
        if not self._has_output() or self.adopted:
            return  # an adopted run was asked to replace the output there; the swap will
        if self.resume and self.resumable and not self.restarted:
            raise OutputExistsError(f"nothing to resume in {self.out}: the {self.what} there is complete")
        if not (self.overwrite or self.restarted):
            raise OutputExistsError(f"{self.out} already holds files; pass `overwrite` to replace the {self.what}")
        if not self.is_output(self.out):
            raise OutputExistsError(f"refusing to overwrite {self.out}: it is not an llm2nifti {self.what}")

    # -- leaving --------------------------------------------------------------------
    def commit(self) -> Path:
        """Swap the staging directory into place (the caller has written the completion mark)."""
        if self.out.is_dir() and not any(self.out.iterdir()):
            file_operation("delete", self.out)
            self.out.rmdir()
        if self.out.exists():
            self._swap()
        else:
            rename(self.staging, self.out)
        self.committed = True
        return self.out

    def _swap(self) -> None:
        """Replace the old output by the staging directory.

        The new output first moves to ``.<name>.old``, then trades places with
        the old one in one ``RENAME_EXCHANGE``, so ``.<name>.old`` beside an
        existing output is always discardable: before the exchange it holds
        the new output (dropping it keeps the old), after it the old output.
        Without ``RENAME_EXCHANGE`` the old output moves aside to
        ``.<name>.old`` for the moment the new one is renamed into place, and
        the next run restores it if a kill falls in between.
        """
        rename(self.staging, self.old)
        file_operation("rename", self.out)
        if not _exchange(self.old, self.out):
            rename(self.old, self.staging)
            rename(self.out, self.old)
            rename(self.staging, self.out)
        remove_tree(self.old)

    def _leave(self, err: BaseException | None) -> None:
        """Release the lock; after a failure also remove this run's staging (unless worth resuming) and parents.

        A :class:`SimulatedKill` leaves everything as a killed process would.
        """
        killed = isinstance(err, SimulatedKill)
        failed = err is not None and not killed and not self.committed
        if failed and self._made_staging and self.staging.exists():
            if self._worth_keeping():
                log.warning("kept the interrupted %s in %s; finish it with `resume`", self.what, self.staging)
            else:
                shutil.rmtree(self.staging, ignore_errors=True)
        self.lock.release(clean=not killed)
        if failed:
            for directory in reversed(self._made_parents):
                with contextlib.suppress(OSError):
                    directory.rmdir()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None and not self.committed:
            exc = RuntimeError("OutputTransaction left without commit()")
            self._leave(exc)
            raise exc
        self._leave(exc)


# -- readers' side ------------------------------------------------------------------------------
def is_staging(path: Path) -> bool:
    """Whether ``path`` is a staging directory (``.<name>.partial``): never an output, whatever it holds."""
    name = Path(path).name
    return name.startswith(".") and name.endswith(STAGING_SUFFIX)


def require_complete(root: Path, record: str, *, is_output, what: str, param: str) -> None:
    """Refuse a staging directory, or a directory without its completion mark ``record``.

    ``is_output(root)`` tells an unfinished output (:class:`IncompleteOutputError`)
    from a directory of another kind (:class:`Llm2niftiError`).
    """
    if is_staging(root):
        raise IncompleteOutputError(f"{root} is the staging directory of an unfinished {what}, not an output")
    if (root / record).is_file():
        return
    if is_output(root):
        raise IncompleteOutputError(f"{root} is an unfinished {what} (it has no {record}); run it again")
    raise Llm2niftiError(f"`{param}` {root} is not an llm2nifti {what} (it has no {record})")
