"""The fused operators of SPEC section 5, one file each.

Every operator is a pair of torch.library custom ops (`adaptir::<op>` and
`adaptir::<op>_backward`) taking a concrete backend name as their last argument, with a
fake kernel and an autograd registration, plus a backend table (ops/_registry.py).
Importing this package registers them all.
"""

from . import combine_out, global_branch, local_branch, project_in, router, spectral_gate  # noqa: F401

OPERATORS = ("project_in", "local_branch", "global_branch", "router", "combine_out")
