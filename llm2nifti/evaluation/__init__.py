"""What masking a neuron set does to a language model: the mathematics of ``mask-eval``.

For the baseline (no mask), each component of a
:class:`~llm2nifti.neuronmask.NeuronMask` and their union, the model reads
held-out text in windows of ``context`` tokens and we measure the mean
next-token cross-entropy (``loss``), ``perplexity = exp(loss)`` and next-token
``accuracy`` (top-1) (:mod:`.metrics`); optional multiple-choice task files
(:mod:`.tasks`) are scored by log-likelihood.

Each condition is compared with ``random_controls`` random masks that hold the
same number of neurons in every layer (:mod:`.controls`). Controls are drawn
uniformly from all neurons of each layer, so a control may share a few neurons
with its condition by chance (about ``count**2 / n_neurons`` per layer); this
keeps controls defined for masks that cover more than half a layer. The draws
come from ``numpy.random.default_rng([seed, crc32(condition name)])``, so a
condition's controls do not depend on which other conditions are evaluated.

Held-out text (:mod:`.heldout`): when the mask's provenance records the corpus
of its export (``CorpusSHA256``) and that is the text evaluated, evaluation
starts at the first token after the export's ``TokenRange``; otherwise it
starts at the beginning of the text, and the result says so.

The command itself (loading, the loop over conditions, outputs) is
:func:`llm2nifti.workflows.mask_eval.mask_eval`.
"""

from .controls import random_controls
from .heldout import EvalText, evaluation_text
from .metrics import choice_accuracy, language_model_metrics, summarise
from .tasks import ChoiceTask, load_task, load_tasks

__all__ = [
    "ChoiceTask",
    "EvalText",
    "choice_accuracy",
    "evaluation_text",
    "language_model_metrics",
    "load_task",
    "load_tasks",
    "random_controls",
    "summarise",
]
