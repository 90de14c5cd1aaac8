"""One workflow per command: validate, open the inputs, compute, write through an output transaction."""
