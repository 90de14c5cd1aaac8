"""Typed, versioned records: which model, which grid and which text an output came from.

An output's JSON record (``export.json``, ``template.json``, ``import.json``,
...) is flat, BIDS-style (``ModelID``, ``Site``, ``CorpusSHA256``...), so the
same keys can sit in BIDS sidecars. Here the keys are grouped by what they
identify:

:class:`ModelIdentity`
    the network: id, class, revision, weights hash, config hash;
:class:`Grid`
    where its neurons are on the image: site, hook point, module paths, layout
    and size;
:class:`TextSpan`
    which tokens were read: corpus, its hash, the token range, runs and context.

:class:`ExportRecord` holds all three (and how the runs are stored);
:class:`Provenance` is what a template, an import or a mask carries forward
(model and grid, and the text when there is one). Each record is a frozen
dataclass with ``to_json``/``from_json``; ``RecordVersion`` is
:data:`RECORD_VERSION`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

from ._version import __version__
from .errors import DamagedFileError, MismatchError

RECORD_VERSION = 2


def _key(json_key: str, default=dataclasses.MISSING):
    return field(default=default, metadata={"json": json_key})


class _Flat:
    """``to_json``/``from_json`` for a frozen dataclass whose fields name their JSON keys."""

    @classmethod
    def json_keys(cls) -> tuple[str, ...]:
        return tuple(f.metadata["json"] for f in dataclasses.fields(cls))

    def to_json(self) -> dict:
        return {f.metadata["json"]: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_json(cls, data: dict, source: str = "record"):
        values = {}
        for f in dataclasses.fields(cls):
            key = f.metadata["json"]
            if key in data:
                values[f.name] = data[key]
            elif f.default is dataclasses.MISSING:
                raise DamagedFileError(f"{source}: missing key {key}; it was not written by llm2nifti "
                                       f"{__version__.rsplit('.', 1)[0]} or later")
        try:
            return cls(**values)
        except (TypeError, ValueError) as err:
            raise DamagedFileError(f"{source}: {err}") from None

    def differences(self, other) -> list[str]:
        """JSON keys whose values differ between two records of the same type."""
        mine, theirs = self.to_json(), other.to_json()
        return [key for key in mine if mine[key] != theirs.get(key)]


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


@dataclass(frozen=True)
class ModelIdentity(_Flat):
    """The network an output was made with.

    ``file_sha256`` hashes the GGUF file or the weight files of a local
    directory; ``config_sha256`` the architecture-defining part of its config.
    """

    model_id: str = _key("ModelID")
    config_sha256: str = _key("ModelConfigSHA256")
    model_class: str | None = _key("ModelClass", None)
    revision: str | None = _key("ModelRevision", None)
    file_sha256: str | None = _key("ModelFileSHA256", None)
    file_kind: str | None = _key("ModelFileKind", None)

    HASH_KEYS: ClassVar[tuple[str, ...]] = ("ModelConfigSHA256", "ModelFileSHA256")

    def conflicts(self, other: ModelIdentity) -> list[str]:
        """Hash keys known on both sides that differ: a different network, whatever its name."""
        mine, theirs = self.to_json(), other.to_json()
        return [k for k in self.HASH_KEYS if mine.get(k) and theirs.get(k) and mine[k] != theirs[k]]

    def check_same(self, other: ModelIdentity, what: str) -> None:
        """Raise :class:`MismatchError` when ``other`` is provably another network."""
        differing = self.conflicts(other)
        if not differing:
            return
        key = differing[0]
        kind = "config" if "Config" in key else "weights"
        mine, theirs = self.to_json()[key], other.to_json()[key]
        same_name = self.model_id == other.model_id
        hint = ("same name, other weights or config: re-export and re-import with this model" if same_name
                else f"use the model {what} was made with")
        raise MismatchError(f"{what} was made with model {self.model_id} ({kind} {mine[:12]}), "
                            f"not {other.model_id} ({kind} {theirs[:12]}); {hint}")


@dataclass(frozen=True)
class Grid(_Flat):
    """Which neurons, and where they sit on the image."""

    site: str = _key("Site")
    hook_point: str = _key("HookPoint")
    layout: str = _key("Layout")
    voxel_size_mm: float = _key("VoxelSizeMM")
    n_layers: int = _key("NumLayers")
    neurons_per_layer: int = _key("NeuronsPerLayer")
    blocks_path: str | None = _key("BlocksPath", None)
    down_proj_path: str | None = _key("DownProjPath", None)

    def __post_init__(self):
        for name in ("n_layers", "neurons_per_layer"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    def neuron_layout(self):
        """The :class:`~llm2nifti.layout.NeuronLayout` this grid describes."""
        from .layout import NeuronLayout

        return NeuronLayout(self.n_layers, self.neurons_per_layer, self.layout, self.voxel_size_mm)


@dataclass(frozen=True)
class TextSpan(_Flat):
    """Which tokens of which text were read, and how."""

    corpus: str = _key("Corpus")
    corpus_sha256: str = _key("CorpusSHA256")
    token_range: tuple = _key("TokenRange")
    context: int = _key("Context")
    prepended_bos: bool = _key("PrependedBOS")

    def __post_init__(self):
        object.__setattr__(self, "token_range", tuple(int(t) for t in self.token_range))


@dataclass(frozen=True)
class Provenance:
    """What a template, an import or a mask carries forward from the export (or template) it came from."""

    model: ModelIdentity
    grid: Grid
    text: TextSpan | None = None

    def to_json(self) -> dict:
        return {**self.model.to_json(), **self.grid.to_json(), **(self.text.to_json() if self.text else {})}

    @classmethod
    def from_json(cls, data: dict, source: str = "record") -> Provenance:
        text = TextSpan.from_json(data, source) if "CorpusSHA256" in data else None
        return cls(ModelIdentity.from_json(data, source), Grid.from_json(data, source), text)


@dataclass(frozen=True)
class ExportRecord:
    """``export.json``: every setting of an export, grouped by what it identifies.

    Attributes
    ----------
    model, grid, text
        See :class:`ModelIdentity`, :class:`Grid`, :class:`TextSpan`.
    subject, task : str
        BIDS labels: the model (``sub-``) and the text (``task-``).
    run_tokens, n_runs : int
    dtype : {"float32", "int16"}
        How the activations are stored.
    nifti2 : bool
    complete : bool
        Whether every run and file was written (the export's own status; the
        directory is complete only when it also holds ``dataset_description.json``).
    version : str
        llm2nifti's version that wrote it.
    compute_dtype : {"float32", "bfloat16", "float16"}
        The dtype the model computed in (activations are converted to float32 to be stored).
        Records written before it was kept say float32, the only dtype there was.
    compressed : bool
        Whether the runs are ``.nii.gz`` (gzip) or ``.nii`` (records written
        before the choice existed say compressed, the only format there was).
    """

    TYPE: ClassVar[str] = "export"

    model: ModelIdentity
    grid: Grid
    text: TextSpan
    subject: str
    task: str
    run_tokens: int
    n_runs: int
    dtype: str = "float32"
    nifti2: bool = False
    complete: bool = False
    version: str = __version__
    compute_dtype: str = "float32"
    compressed: bool = True

    @property
    def provenance(self) -> Provenance:
        return Provenance(self.model, self.grid, self.text)

    def to_json(self) -> dict:
        return {
            "RecordType": self.TYPE,
            "RecordVersion": RECORD_VERSION,
            "llm2niftiVersion": self.version,
            **self.model.to_json(),
            **self.grid.to_json(),
            "Subject": self.subject,
            "TaskName": self.task,
            "RunTokens": self.run_tokens,
            "NumRuns": self.n_runs,
            **self.text.to_json(),
            "DataType": self.dtype,
            "ComputeDtype": self.compute_dtype,
            "NIfTI2": self.nifti2,
            "Compressed": self.compressed,
            "Status": "complete" if self.complete else "incomplete",
        }

    @classmethod
    def from_json(cls, data: dict, source: str = "export.json") -> ExportRecord:
        check_record_type(data, cls.TYPE, source)
        try:
            return cls(ModelIdentity.from_json(data, source), Grid.from_json(data, source),
                       TextSpan.from_json(data, source), str(data["Subject"]), str(data["TaskName"]),
                       int(data["RunTokens"]), int(data["NumRuns"]),
                       str(data.get("DataType", "float32")), bool(data.get("NIfTI2", False)),
                       data.get("Status") == "complete", str(data.get("llm2niftiVersion", "?")),
                       str(data.get("ComputeDtype", "float32")), bool(data.get("Compressed", True)))
        except (KeyError, TypeError, ValueError) as err:
            raise DamagedFileError(f"{source}: not a valid export record ({err})") from None

    def resume_conflicts(self, other: ExportRecord) -> list[str]:
        """Settings that differ between an interrupted export and the one asked for now.

        Everything that identifies the model, the grid and the text, and the
        run and storage settings, must match; the version may differ.
        """
        mine, theirs = self.to_json(), other.to_json()
        ignored = {"llm2niftiVersion", "Status"}
        return [k for k in mine if k not in ignored and mine[k] != theirs.get(k)]


def check_record_type(data: dict, expected: str, source: str) -> None:
    """Refuse a record of another type or a newer version than this llm2nifti reads."""
    kind = data.get("RecordType")
    if kind is not None and kind != expected:
        raise DamagedFileError(f"{source}: a {kind} record, not an {expected} record")
    version = data.get("RecordVersion", 1)
    if not isinstance(version, int) or version > RECORD_VERSION:
        raise DamagedFileError(f"{source}: record version {version!r} is newer than this llm2nifti "
                               f"({__version__}) reads; upgrade llm2nifti")
