"""Errors that mean "the user asked for something that cannot be done"."""


class UserError(Exception):
    """A mistake in the user's input: the CLI prints its message on one line and exits 1.

    Anything else that escapes is a bug in llm2nifti and keeps its traceback.
    """
