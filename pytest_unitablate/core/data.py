"""Evaluation data in the forms users have it, as validated ``(inputs, labels)`` batches.

Accepted forms:

* an iterable of ``(inputs, labels)`` batches (a ``DataLoader``, a list, ...);
* a zero-argument callable returning such an iterable (so a generator can be re-iterated);
* a map-style ``torch.utils.data.Dataset`` whose items are ``(input, label)``; it is batched
  in order, without shuffling;
* a pair of tensors ``(X, y)``, batched in order.

A batch's inputs may also be a dict of tensors (a tokenizer's ``input_ids`` and
``attention_mask``): a batch ``(dict, labels)``, or one dict with its labels under
``labels`` (:mod:`pytest_unitablate.core.tokens`; the model is called ``model(**inputs)``).

Example::

    >>> import torch
    >>> X, y = torch.zeros(5, 3), torch.tensor([0, 1, 2, 1, 0])
    >>> [tuple(b[0].shape) for b in iter_batches((X, y), batch_size=2)]
    [(2, 3), (2, 3), (1, 3)]
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from torch.utils.data import (
    DataLoader,
    Dataset,
    IterableDataset,
    RandomSampler,
    SubsetRandomSampler,
    WeightedRandomSampler,
)

from pytest_unitablate.errors import DataError

Batch = tuple[Any, torch.Tensor]  # (a tensor or a core.tokens.TokenBatch, labels)


def _is_tensor_pair(data: Any) -> bool:
    return (
        isinstance(data, tuple)
        and len(data) == 2
        and isinstance(data[0], torch.Tensor)
        and isinstance(data[1], torch.Tensor)
    )


def _raw_batches(data: Any, batch_size: int) -> Iterable[Any]:
    if _is_tensor_pair(data):
        inputs, labels = data
        if inputs.shape[0] != labels.shape[0]:
            raise DataError(
                f"data is a pair (inputs, labels) of different lengths: "
                f"{inputs.shape[0]} inputs, {labels.shape[0]} labels"
            )
        return (
            (inputs[i : i + batch_size], labels[i : i + batch_size])
            for i in range(0, inputs.shape[0], batch_size)
        )
    if isinstance(data, Dataset) and not isinstance(data, torch.utils.data.IterableDataset):
        return DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=0)
    if callable(data) and not isinstance(data, Iterable):
        produced = data()
        if not isinstance(produced, Iterable):
            raise DataError(
                f"data callable {getattr(data, '__name__', data)!r} returned "
                f"{type(produced).__name__}, not an iterable of (inputs, labels) batches"
            )
        return produced
    if isinstance(data, Iterable):
        return data
    raise DataError(
        f"data must be an iterable of (inputs, labels) batches, a torch Dataset, a pair of "
        f"tensors, or a callable returning one; got {type(data).__name__}"
    )


def _check_batch(index: int, batch: Any) -> Batch:
    from pytest_unitablate.core.tokens import LABELS_KEY, TokenBatch

    where = f"batch {index}"
    if isinstance(batch, Mapping):
        if LABELS_KEY not in batch:
            raise DataError(f"{where} is a dict without {LABELS_KEY!r}: give the labels "
                            f"(target token ids, or classes) under {LABELS_KEY!r}, or a pair "
                            f"(inputs, labels)")
        labels = batch[LABELS_KEY]
        batch = ({k: v for k, v in batch.items() if k != LABELS_KEY}, labels)
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        kind = type(batch).__name__
        size = f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else ""
        raise DataError(f"{where} is a {kind}{size}; expected a pair (inputs, labels)")
    inputs, labels = batch
    if isinstance(inputs, Mapping) and not isinstance(inputs, TokenBatch):
        inputs = TokenBatch.checked(where, inputs)
    if not isinstance(inputs, (torch.Tensor, TokenBatch)):
        raise DataError(f"{where}: inputs are a {type(inputs).__name__}, not a tensor")
    if not isinstance(labels, torch.Tensor):
        if isinstance(labels, (list, tuple)) and all(isinstance(v, int) for v in labels):
            if any(isinstance(v, bool) for v in labels):  # as a bool tensor is refused
                raise DataError(f"{where}: labels are booleans; expected integer class "
                                f"indices")
            labels = torch.tensor(labels, dtype=torch.int64)
        else:
            raise DataError(f"{where}: labels are a {type(labels).__name__}, not a tensor")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise DataError(
            f"{where}: labels have dtype {labels.dtype}; expected integer class indices"
        )
    if labels.dim() != 1:
        raise DataError(
            f"{where}: labels have shape {tuple(labels.shape)}; expected (N,) class indices, "
            f"one per example (for a language model: one target token id per prompt, with "
            f"the spec's position: saying which position's next token it is)"
        )
    if inputs.dim() == 0 or inputs.shape[0] != labels.shape[0]:
        raise DataError(
            f"{where}: {tuple(inputs.shape)[:1] or 'scalar'} inputs but "
            f"{labels.shape[0]} labels; the first dimension must match"
        )
    if labels.numel() and int(labels.min()) < 0:
        raise DataError(f"{where}: negative label {int(labels.min())}")
    return inputs, labels


class PassDigest:
    """An order-sensitive fingerprint of one pass over the data.

    Every example's input bytes and label go into a sha256 in the order the pass sees them,
    so two passes agree exactly when they saw the same examples in the same order: what
    paired statistics (baseline vs ablated, per example) require.

    >>> a, b = PassDigest(), PassDigest()
    >>> x, y = torch.arange(4.0).view(2, 2), torch.tensor([0, 1])
    >>> a.update(x, y); b.update(x.flip(0), y.flip(0))
    >>> a.hexdigest() == b.hexdigest()
    False
    """

    def __init__(self) -> None:
        self._sha = hashlib.sha256()

    def update(self, inputs: Any, labels: torch.Tensor) -> None:
        from pytest_unitablate.core.tokens import TokenBatch

        if isinstance(inputs, TokenBatch):
            for key in sorted(inputs):
                self._sha.update(key.encode())
                self._tensor(inputs[key])
        else:
            self._tensor(inputs)
        self._sha.update(labels.detach().to("cpu", torch.int64).numpy().tobytes())

    def _tensor(self, inputs: torch.Tensor) -> None:
        x = inputs.detach().to("cpu").contiguous()
        # the batch's dtype and per-example shape (the hash data_fingerprint always had)
        self._sha.update(str((x.dtype, tuple(x.shape[1:]))).encode())
        if x.dtype == torch.bfloat16:
            x = x.float()
        self._sha.update(x.numpy().tobytes())

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


def require_replayable(data: Any) -> None:
    """Refuse data that cannot give the same examples in the same order on every pass.

    A baseline pass and an ablated pass are compared example by example, so the data must
    be replayed unchanged: a shuffling ``DataLoader`` and a one-shot iterator (a generator
    object) are refused with what to change. Everything else is checked after the fact by
    comparing each pass's :class:`PassDigest` with the baseline's (a custom sampler, an
    ``IterableDataset``, random augmentation).

    >>> try:
    ...     require_replayable(iter([1, 2]))
    ... except DataError as exc:
    ...     print(str(exc)[:48])
    the data is a one-shot iterator (list_iterator):
    """
    if isinstance(data, DataLoader) and not isinstance(data.dataset, IterableDataset):
        batches: Any = data.batch_sampler
        sampler = getattr(batches, "sampler", None) if batches is not None else data.sampler
        shuffles = isinstance(sampler, (RandomSampler, SubsetRandomSampler,
                                         WeightedRandomSampler)) or bool(
            getattr(sampler, "shuffle", False))
        if shuffles:
            raise DataError(
                f"the DataLoader draws its examples with {type(sampler).__name__}"
                f"{' (shuffle=True)' if 'Random' in type(sampler).__name__ else ''}: each "
                f"pass would see them in another order, and the baseline and the ablated "
                f"passes are compared example by example. Build it with shuffle=False "
                f"(and no random sampler) for evaluation")
    elif isinstance(data, Iterator):
        raise DataError(
            f"the data is a one-shot iterator ({type(data).__name__}): it is used up after "
            f"the first pass, and every ablation needs another pass over the same examples. "
            f"Give a list, a Dataset, a DataLoader, or a zero-argument callable that returns "
            f"a fresh iterable (the generator function itself, not its result)")


_PASS_SEED: ContextVar[int | None] = ContextVar("unitablate_pass_seed", default=None)


@contextmanager
def seeded_passes(seed: int | None) -> Iterator[None]:
    """Inside the block, every pass over data (each :func:`iter_batches` iteration, in
    every engine) starts with ``torch.manual_seed(seed)``: data that draws random
    augmentation from torch's global generator then replays the same examples on every
    pass, as pairing needs. ``None`` leaves the generator alone.

    >>> import torch
    >>> class Noisy:
    ...     def __iter__(self):
    ...         yield torch.rand(2, 1), torch.tensor([0, 1])
    >>> with seeded_passes(3):
    ...     a = next(iter_batches(Noisy()))[0]
    ...     b = next(iter_batches(Noisy()))[0]
    >>> bool(torch.equal(a, b))
    True
    """
    token = _PASS_SEED.set(seed)
    try:
        yield
    finally:
        _PASS_SEED.reset(token)


def iter_batches(
    data: Any, *, batch_size: int = 256, device: torch.device | str | None = None,
    digest: PassDigest | None = None,
) -> Iterator[Batch]:
    """Yield validated ``(inputs, labels)`` batches, labels as int64, on ``device``.

    Raises :class:`~pytest_unitablate.errors.DataError` naming the batch and the problem.
    Empty batches are skipped; no examples at all is an error. With ``digest``, every batch
    is added to it (before it moves to ``device``). Inside :func:`seeded_passes`, the
    pass starts by seeding torch's global generator.
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    seed = _PASS_SEED.get()
    if seed is not None:
        torch.manual_seed(seed)
    seen = 0
    for index, raw in enumerate(_raw_batches(data, batch_size)):
        inputs, labels = _check_batch(index, raw)
        if labels.numel() == 0:
            continue
        seen += labels.numel()
        if digest is not None:
            digest.update(inputs, labels)
        if device is not None:
            inputs = inputs.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
        yield inputs, labels.to(torch.int64)
    if seen == 0:
        hint = (" (a one-shot iterator used up by an earlier pass?)"
                if isinstance(data, Iterator) else "")
        raise DataError(f"the data has no examples{hint}")


def first_inputs(data: Any) -> Any:
    """The inputs of ``data``'s first batch (a tensor, or a tokenizer-style
    :class:`~pytest_unitablate.core.tokens.TokenBatch`): what decides whether a traced graph
    can take them."""
    return next(iter(iter_batches(data)))[0]


def count_examples(data: Any) -> int | None:
    """How many examples ``data`` holds, when that is known without a pass (a tensor pair, a
    sized ``Dataset``, a ``DataLoader`` over one); ``None`` otherwise. For progress bars.

    >>> import torch
    >>> count_examples((torch.zeros(5, 2), torch.zeros(5))), count_examples(lambda: [])
    (5, None)
    """
    if _is_tensor_pair(data):
        return int(data[0].shape[0])
    if isinstance(data, DataLoader):
        data = data.dataset
    if isinstance(data, Dataset) and not isinstance(data, IterableDataset):
        try:
            return len(data)  # type: ignore[arg-type]
        except TypeError:
            return None
    return None


def data_fingerprint(data: Any, *, batch_size: int = 256) -> str:
    """sha256 over the inputs and labels of ``data`` in order (streamed): the
    :class:`PassDigest` of one pass, so it equals ``evaluate(model, data).fingerprint``
    when both cut the data into the same batches (the same ``batch_size``, or the loader's).

    >>> import torch
    >>> a = data_fingerprint((torch.zeros(2, 2), torch.tensor([0, 1])))
    >>> b = data_fingerprint((torch.zeros(2, 2), torch.tensor([1, 1])))
    >>> a != b
    True
    """
    digest = PassDigest()
    for _ in iter_batches(data, batch_size=batch_size, digest=digest):
        pass
    return digest.hexdigest()


class GroupedData:
    """Named groups of data (prompt sets, "night images") evaluated as one data set, in
    order: every group's batches, group after group. :meth:`group_ids` says which group
    each example is in, in the order every pass sees them.

    >>> import torch
    >>> both = GroupedData([("a", (torch.zeros(3, 2), torch.zeros(3, dtype=torch.long))),
    ...                     ("b", (torch.ones(2, 2), torch.ones(2, dtype=torch.long)))])
    >>> both.names, both.group_ids().tolist()
    (('a', 'b'), [0, 0, 0, 1, 1])
    """

    def __init__(self, parts: Iterable[tuple[str, Any]]) -> None:
        self.parts = list(parts)
        self.names = tuple(name for name, _ in self.parts)
        self._ids: Any = None
        for name, part in self.parts:
            try:
                require_replayable(part)
            except DataError as exc:
                raise DataError(f"data group {name!r}: {exc}") from None

    def __iter__(self) -> Iterator[Batch]:
        for name, part in self.parts:
            try:
                yield from iter_batches(part)
            except DataError as exc:
                raise DataError(f"data group {name!r}: {exc}") from None

    def group_ids(self) -> Any:
        """``np.ndarray`` of group indices, one per example, in pass order."""
        import numpy as np

        if self._ids is None:
            sizes = [sum(int(labels.shape[0]) for _, labels in iter_batches(part))
                     for _, part in self.parts]
            self._ids = np.repeat(np.arange(len(sizes)), sizes)
        return self._ids


DataSource = Iterable[Batch] | Dataset[Any] | Callable[[], Iterable[Batch]] | Batch
