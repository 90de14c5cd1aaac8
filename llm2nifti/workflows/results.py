"""Results that write themselves: one output directory, written through one transaction."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from ..checks import check_bool, check_path
from ..transaction import OutputTransaction


class WrittenResult:
    """Base of a command's result that writes one output directory.

    A subclass (a dataclass with an ``out_dir`` field) names its output
    (``WHAT``), tells its own outputs apart (``is_output``) and writes its
    files into a directory (``_write_files``). :meth:`write` does it in a new
    transaction; a workflow that opened the transaction before computing (to
    hold the lock during the work) calls :meth:`write_into`.
    """

    WHAT: ClassVar[str]
    out_dir: Path | None

    @staticmethod
    def is_output(path: Path) -> bool:
        raise NotImplementedError

    def _write_files(self, directory: Path) -> None:
        raise NotImplementedError

    @classmethod
    def transaction(cls, out, overwrite: bool) -> OutputTransaction:
        """The transaction that writes this kind of output to ``out`` (both arguments checked)."""
        return OutputTransaction(check_path("out", out), what=cls.WHAT, is_output=cls.is_output,
                                 overwrite=check_bool("overwrite", overwrite))

    def write_into(self, tx: OutputTransaction) -> Path:
        """Write every file into the transaction's staging directory and commit it; returns the output."""
        self._write_files(tx.staging)
        self.out_dir = tx.commit()
        return self.out_dir

    def write(self, out: str | Path, *, overwrite: bool = False) -> Path:
        """Write the output directory; an existing one is replaced only with ``overwrite``, once complete."""
        with self.transaction(out, overwrite) as tx:
            return self.write_into(tx)
