"""llm2nifti: treat a language model as a brain.

Export MLP neuron activations as BIDS-style pseudo-4D NIfTI runs, analyse them
with unchanged neuroimaging tools (nilearn, FSL MELODIC, viewers), map
component maps back to neurons, and test those neurons with masking hooks.

Every command of the ``llm2nifti`` program has one Python twin here with the
same parameter names: :func:`export`, :func:`import_components`,
:func:`run_ica`, :func:`recurrence`, :func:`mask_eval`, :func:`make_template`,
:func:`view`, :func:`run_glm`, :func:`localizer`, :func:`study`.
"""

from ._version import __version__
from .errors import Llm2niftiError, UserError
from .ica import NeuronICA
from .indices import neuron_label
from .layout import NeuronLayout
from .masking import apply_mask
from .models import LoadedModel, load_model
from .neuronmask import NeuronMask
from .recurrence import Recurrence
from .sites import find_blocks, hook_point, site_hooks
from .workflows.export import ExportResult, export
from .workflows.glm import run_glm
from .workflows.ica import run_ica
from .workflows.importing import import_components
from .workflows.localizer import localizer
from .workflows.mask_eval import mask_eval
from .workflows.recurrence import recurrence
from .workflows.study import study
from .workflows.template import make_template
from .workflows.view import ViewResult, view

__all__ = [
    "ExportResult",
    "Llm2niftiError",
    "LoadedModel",
    "NeuronICA",
    "NeuronMask",
    "NeuronLayout",
    "Recurrence",
    "UserError",
    "ViewResult",
    "__version__",
    "apply_mask",
    "export",
    "find_blocks",
    "hook_point",
    "import_components",
    "load_model",
    "localizer",
    "make_template",
    "mask_eval",
    "neuron_label",
    "recurrence",
    "run_glm",
    "run_ica",
    "site_hooks",
    "study",
    "view",
]
