"""A call's shared prompt prefix, run once for all of its passes (``WorkerConfig.share_prefix``).

:func:`steprl.modeling.prefix_shared_forward` shares the prefix among the rows of one pass. A call that
needs several passes (one log-prob forward, one mini-batch of an update) then ran the prefix once per pass:
on SmolLM2, atlas's system prompt and tool schemas are 428 tokens, and a pass holds one to three
episodes. Here the prefix runs once per call, on one row, and every pass continues from its keys and values.

In an update, each pass's backward stops at leaf copies of those keys and values; their gradients add up
over the passes, and :meth:`SharedPrefix.backward` takes the sum through the prefix's own graph once, after
the last pass. Causal attention makes that the same gradient as running the prefix in every row (float
summation order aside; ``tests/test_prefix_cache.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from steprl.modeling import kept_positions


@dataclass
class SharedPrefix:
    """The prefix's keys and values per layer and its own output, in the graph of the prefix's forward
    (``graph``), and the detached copies the passes read (``leaves``; with ``requires_grad`` when the
    prefix ran with gradients)."""

    length: int
    graph: list[torch.Tensor]  # keys of every layer, values of every layer, the prefix's output
    leaves: list[torch.Tensor]
    full_output: bool  # the prefix's output is part of every row's (values), not one unused logit row

    @classmethod
    def run(
        cls, model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, full_output: bool
    ) -> SharedPrefix:
        """Run the model on ``input_ids`` (``[1, length]``, the prefix of one row). ``full_output``: keep the
        output at every prefix position (a value head's, read at every column); else one logit row, which
        only keeps the prefix's last layer in the graph."""
        from transformers import DynamicCache

        cache = DynamicCache()  # filled in place (token-classification heads do not return it)
        out = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            past_key_values=cache,
            use_cache=True,
            **({} if full_output else {"logits_to_keep": 1}),
        ).logits
        length = input_ids.shape[1]
        if cache.get_seq_length() != length:
            raise RuntimeError(
                f"{type(model).__name__} did not fill the key/value cache: prefix sharing needs it"
            )
        graph = [layer.keys for layer in cache.layers] + [layer.values for layer in cache.layers] + [out]
        grad = torch.is_grad_enabled()
        leaves = [t.detach().requires_grad_(grad and t.requires_grad) for t in graph]
        return cls(length, graph, leaves, full_output)

    @property
    def layers(self) -> int:
        return (len(self.leaves) - 1) // 2

    def forward(
        self,
        model: torch.nn.Module,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        keep_from: int | None = None,
    ) -> torch.Tensor:
        """What :func:`~steprl.modeling.prefix_shared_forward` returns for rows that begin with this prefix:
        logits at columns ``keep_from .. L - 2`` (``keep_from`` at least the prefix length), or with
        ``full_output`` the output at every column."""
        from transformers import DynamicCache

        rows, width, n = input_ids.shape[0], input_ids.shape[1], self.length
        if width <= n or (keep_from is not None and keep_from < n):
            raise ValueError(
                f"a pass {width} wide, logits from {keep_from}, cannot continue a {n}-token prefix"
            )
        alive = attention_mask.bool().any(1)
        if not bool(alive.all()):  # padding rows see the prefix too: their outputs are never read
            attention_mask = attention_mask.clone()
            attention_mask[~alive, :n] = 1
        cache = DynamicCache()
        for i in range(self.layers):
            k, v = self.leaves[i], self.leaves[self.layers + i]
            cache.update(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1), i)
        keep = {} if keep_from is None else {"logits_to_keep": kept_positions(width, keep_from, n)}
        tail = model(
            input_ids=input_ids[:, n:],
            attention_mask=attention_mask,
            past_key_values=cache,
            use_cache=True,
            **keep,
        ).logits
        if self.full_output:
            return torch.cat([self.leaves[-1].expand(rows, -1, -1), tail], dim=1)
        return tail

    def backward(self) -> None:
        """After every pass's backward: the gradients the passes left on the leaves, through the prefix's
        graph. Its output gets a zero gradient where no pass read it, so the backward runs through every
        layer (FSDP2 gathers a layer's parameters for backward at its output)."""
        pairs = [(t, leaf) for t, leaf in zip(self.graph, self.leaves, strict=True) if t.requires_grad]
        if not pairs:
            return
        grads = [leaf.grad if leaf.grad is not None else torch.zeros_like(t) for t, leaf in pairs]
        torch.autograd.backward([t for t, _ in pairs], grads)
        self.graph, self.leaves = [], []  # the graph is spent; nothing may read it again
