"""Ablated copies of an attention layer's output, one head (or set of heads) per copy.

Zeroing a head's output leaves its queries, keys, values and attention pattern alone: only
the output projection and what follows see the change. And the projection is linear, so
with ``z`` the heads' concatenated output (the projection's input), head ``h`` replaced
by ``r_h`` changes the projection's output by exactly

    delta_h = (r_h - z_h) @ W[:, h].T

(``W[:, h]``: the projection's columns of head ``h``). The prefix engine
(:mod:`~pytest_unitablate.core.scan.suffix`) splits the network at the attention
layer's output, runs everything up to it once per batch (capturing ``z`` on the way), and
the rest once per stack of ablated copies ``out + delta_h``: per head, only the network
from the output projection on runs again.

Which layers qualify is decided from the module alone, before anything is traced:
an ``nn.MultiheadAttention`` with ``batch_first=True``, an output projection that is an
``nn.Linear`` or a Hugging Face ``Conv1D`` (the heads are its input), or a TransformerLens
``hook_z`` (the heads are its output: the copies replace a head's slice directly).

Example::

    heads = head_projection(model, "encoder.layers.encoder_layer_1.self_attention")
    if heads is not None:                     # None: use the older head engines
        with heads.capturing() as captured:   # z of the forward that runs inside
            out = model(x)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pytest_unitablate.core.heads import HeadSite, editing_heads, head_site


@dataclass
class HeadProjection:
    """A head site whose ablation the prefix engine can apply after the layer's output."""

    site: HeadSite
    #: the projection's weight as ``(out_features, in_features)``; ``None`` for a hook
    #: point whose output is the heads themselves
    weight: torch.Tensor | None
    #: the captured ``z`` is sequence-first (``nn.MultiheadAttention`` runs that way inside)
    seq_first: bool = False
    captured: list[torch.Tensor] = field(default_factory=list)

    @contextmanager
    def capturing(self) -> Iterator[list[torch.Tensor]]:
        """Keep the heads' concatenated output of every call of the layer inside the block
        (unchanged: the forward's values are exactly those without it)."""
        self.captured.clear()

        def keep(z: torch.Tensor) -> torch.Tensor:
            self.captured.append(z)
            return z

        if self.weight is None:  # the hook point's output is the heads: the prefix has it
            yield self.captured
            return
        with editing_heads(self.site, keep):
            yield self.captured

    def heads_of(self, out: Any) -> torch.Tensor:
        """``z`` batch-first, ``(batch, ..., heads * head_dim)``, for the output ``out`` of
        the pass that ran inside :meth:`capturing`."""
        if self.weight is None:  # a hook point with a head axis: its output is z itself
            return out.reshape(*out.shape[:2], -1)  # type: ignore[no-any-return]
        (z,) = self.captured
        return z.transpose(0, 1) if self.seq_first else z

    def copies(self, out: Any, z: torch.Tensor, chunk: Sequence[tuple[int, ...]],
               repl: torch.Tensor) -> Any:
        """The layer's output ``out`` (a tensor, or a tuple whose first element is the
        tensor) for ``len(chunk)`` ablated copies stacked on dimension 0: copy ``j`` with
        the heads of ``chunk[j]`` replaced by their values in ``repl`` (per feature of
        ``z``)."""
        main = out if isinstance(out, torch.Tensor) else out[0]
        heads = self.site.num_heads
        size = z.shape[-1] // heads
        k, batch = len(chunk), main.shape[0]
        if self.weight is None:
            stacked = main.unsqueeze(0).repeat(k, *([1] * main.dim()))
            view = stacked.view(k, *main.shape[:2], heads, -1)
            for j, variant in enumerate(chunk):
                index = torch.as_tensor(list(variant), device=main.device)
                view[j, :, :, index] = repl.view(heads, -1)[index].to(main.dtype)
        else:
            diff = (repl - z).reshape(*z.shape[:-1], heads, size)  # (..., H, d)
            w = self.weight.reshape(self.weight.shape[0], heads, size).to(diff.dtype)
            if all(len(v) == 1 for v in chunk):
                index = torch.as_tensor([v[0] for v in chunk], device=diff.device)
                delta = torch.einsum("...hd,ehd->h...e", diff[..., index, :], w[:, index])
            else:
                delta = torch.stack([
                    torch.einsum("...hd,ehd->...e", diff[..., list(v), :], w[:, list(v)])
                    for v in chunk])
            stacked = main.unsqueeze(0) + delta.reshape(k, *main.shape).to(main.dtype)
        flat = stacked.reshape(k * batch, *main.shape[1:])
        if isinstance(out, torch.Tensor):
            return flat
        rest = [v.repeat(k, *([1] * (v.dim() - 1)))
                if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == batch else v
                for v in out[1:]]
        return type(out)((flat, *rest)) if isinstance(out, tuple) else [flat, *rest]


def head_projection(model: nn.Module, layer: str, num_heads: int | None = None
                    ) -> HeadProjection | None:
    """The head site of ``layer`` when its ablation can be applied after the layer's output
    (see the module's docstring), else ``None``. Decided from the modules alone."""
    site = head_site(model, layer, num_heads)
    module = site.module
    if site.kind == "mha":
        assert isinstance(module, nn.MultiheadAttention)
        if not module.batch_first:
            return None  # its output is (sequence, batch, ...): copies stack on the batch
        return HeadProjection(site, module.out_proj.weight.detach(), seq_first=True)
    if site.kind == "projection":
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            return None
        if isinstance(module, nn.Linear):
            return HeadProjection(site, weight.detach())
        if type(module).__name__ == "Conv1D":  # Hugging Face GPT-2: weight (in, out)
            return HeadProjection(site, weight.detach().T)
        return None
    if site.kind == "hook" and layer.endswith("hook_z"):
        return HeadProjection(site, None)
    return None


__all__ = ["HeadProjection", "head_projection"]
