"""What masking a neuron set does to a language model: the mathematics of ``mask-eval``.

For the baseline (no mask), each component of a
:class:`~llm2nifti.neuronmask.NeuronMask` and their union, the model reads
held-out text in windows of ``context`` tokens and we measure the mean
next-token cross-entropy (``loss``), ``perplexity = exp(loss)`` and next-token
``accuracy`` (top-1) (:mod:`.metrics`); optional multiple-choice task files
(:mod:`.tasks`) are scored by log-likelihood.

Each condition is compared with ``random_controls`` null controls that never
share a neuron with it and hold as many neurons in every layer, matched by
default on each neuron's within-layer variance bin (:mod:`.controls`). The
condition's ``delta_loss`` is read against the controls' distribution: its
median and 5-95 % range, an empirical p-value and warnings for a null that is
multimodal or dominated by a few draws; every set is described by its size,
per-layer counts, share of the activation variance and massive channels
(:mod:`.statistics`). Control ``r`` of a condition is drawn from
``numpy.random.default_rng([seed, crc32(condition name), r])``.

Held-out text (:mod:`.heldout`): when the mask's provenance records the corpus
of its export (``CorpusSHA256``) and that is the text evaluated, evaluation
starts at the first token after the export's ``TokenRange``; otherwise it
starts at the beginning of the text, and the result says so.

The command itself (loading, the loop over conditions, outputs) is
:func:`llm2nifti.workflows.mask_eval.mask_eval`.
"""

from .controls import CONTROL_KINDS, ControlDraw, draw_controls, random_controls
from .heldout import EvalText, evaluation_text
from .metrics import choice_accuracy, language_model_metrics, summarise
from .statistics import describe_set, empirical_p, null_summary, null_warnings, variance_ranked
from .tasks import ChoiceTask, load_task, load_tasks

__all__ = [
    "CONTROL_KINDS",
    "ChoiceTask",
    "ControlDraw",
    "describe_set",
    "draw_controls",
    "empirical_p",
    "null_summary",
    "null_warnings",
    "variance_ranked",
    "EvalText",
    "choice_accuracy",
    "evaluation_text",
    "language_model_metrics",
    "load_task",
    "load_tasks",
    "random_controls",
    "summarise",
]
