"""llm2nifti: treat a language model as a brain.

Export MLP neuron activations as BIDS-style pseudo-4D NIfTI runs, analyse them
with unchanged neuroimaging tools (nilearn, FSL MELODIC, viewers), map
component maps back to neurons, and test those neurons with masking hooks.
"""

__version__ = "0.1.0"

from .errors import UserError  # noqa: E402
from .evaluate import mask_eval  # noqa: E402
from .export import ExportResult, export  # noqa: E402
from .ica import NeuronICA, run_ica  # noqa: E402
from .importer import import_components  # noqa: E402
from .layout import NeuronLayout, neuron_label  # noqa: E402
from .masking import apply_mask  # noqa: E402
from .models import LoadedModel, load_model  # noqa: E402
from .neuronmask import NeuronMask  # noqa: E402
from .recurrence import Recurrence, recurrence  # noqa: E402
from .sites import find_blocks, hook_point, site_hooks  # noqa: E402
from .templates import make_template  # noqa: E402

__all__ = [
    "ExportResult",
    "LoadedModel",
    "NeuronICA",
    "NeuronMask",
    "NeuronLayout",
    "Recurrence",
    "UserError",
    "apply_mask",
    "export",
    "find_blocks",
    "hook_point",
    "import_components",
    "load_model",
    "make_template",
    "mask_eval",
    "neuron_label",
    "recurrence",
    "run_ica",
    "site_hooks",
]
