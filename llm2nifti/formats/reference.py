"""Opening the grid a map lives on: an export's or a template's, whichever a path is.

``llm2nifti import``, the viewer and the figures need only this part of an
export, and a template holds nothing else.
"""

from __future__ import annotations

from ..errors import Llm2niftiError
from .grid import GridReference, existing_dir

__all__ = ["GridReference", "open_reference"]


def open_reference(path, *, param: str = "export") -> GridReference:
    """Read an export or a template directory (whichever ``path`` is)."""
    from .export import EXPORT_RECORD, open_export
    from .template import TEMPLATE_RECORD, open_template

    root = existing_dir(path, param, "an llm2nifti export or template")
    if (root / EXPORT_RECORD).is_file():
        export = open_export(root, param=param)
        return GridReference(export.root, "export", export.record.provenance, export.layout, export.paths.mask,
                             export.affine)
    if (root / TEMPLATE_RECORD).is_file():
        return open_template(root, param=param)
    raise Llm2niftiError(f"`{param}` {root} has no {EXPORT_RECORD} or {TEMPLATE_RECORD}: it is not an llm2nifti "
                         "export or template")
