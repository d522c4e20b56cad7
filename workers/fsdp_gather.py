"""FSDP2 parameters kept gathered across one call's passes (``WorkerConfig.gather_once``).

FSDP2 gathers each layer's parameters for every forward and again for every backward, and reduce-scatters
the gradients after every backward. On a CPU those are copies of the whole model per pass, even on one
rank (7-8% of a SmolLM2 update; 1.1x of the default recipe's iteration). Within :func:`gathered`, forwards
and backwards keep the parameters gathered and accumulate unreduced gradients; :func:`sync_on` makes the
last pass's backward reduce them. The block ends with every module resharded, so an optimizer step that
follows updates the shards, and the next forward gathers the new values.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def gathered(model: torch.nn.Module, enabled: bool = True) -> Iterator[None]:
    """Parameters of the FSDP2 ``model`` stay gathered from its first forward to the end of the block."""
    from torch.distributed.fsdp import FSDPModule

    if not enabled:
        yield
        return
    modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for m in modules:
        m.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for m in modules:  # FSDP2's defaults: the root keeps its parameters after forward
            m.set_reshard_after_forward(m is not model, recurse=False)
            m.set_reshard_after_backward(True, recurse=False)
            m.set_requires_gradient_sync(True, recurse=False)
            m.reshard()


def sync_on(model: torch.nn.Module, last: bool, enabled: bool = True) -> None:
    """Inside :func:`gathered`: the next backward reduces the accumulated gradients (and reshards) only
    if it is the block's ``last``."""
    if enabled:
        model.set_reshard_after_backward(last)
        model.set_requires_gradient_sync(last)
