"""Top-1 evaluation with per-class accuracy, per-example correctness and log-probability.

Definitions (as in the project's design contract):

* **overall accuracy**: top-1 accuracy over all examples;
* **class accuracy** of class ``k``: the fraction of examples labelled ``k`` whose top-1
  prediction is ``k`` (recall); NaN for a class with no examples;
* the per-example correctness is kept so that drops can be tested as *paired* samples;
* so is each example's **log-probability of its true class**, ``log_softmax(logits)[y]`` in
  nats, computed from the same logits (float32): the continuous measure beside accuracy.

The model runs in eval mode under ``torch.inference_mode()``; the training flag of every
submodule and the grad mode are restored afterwards, also when forward raises. The model is
never moved: inputs go to ``device`` if given, else to the device of the model's first
parameter (or buffer). Only predictions are kept, so memory is bounded by one batch.
Ties in the logits go to the lowest class index (``torch.argmax``).

Example::

    >>> import torch
    >>> model = torch.nn.Linear(2, 2, bias=False)
    >>> _ = model.weight.data.copy_(torch.eye(2))
    >>> r = evaluate(model, (torch.tensor([[1., 0.], [0., 1.], [1., 0.]]), torch.tensor([0, 1, 1])))
    >>> round(r.accuracy, 3), r.class_accuracy.tolist(), r.class_counts.tolist()
    (0.667, [1.0, 0.5], [1, 2])
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from pytest_unitablate.core.data import PassDigest, iter_batches
from pytest_unitablate.core.tokens import call_model
from pytest_unitablate.errors import (
    DataError,
    NonFiniteLogitsError,
    OutputError,
    PositionError,
    UnpairedDataError,
)


@dataclass(frozen=True)
class EvalResult:
    """The outcome of :func:`evaluate`; arrays are per example in data order."""

    labels: npt.NDArray[np.int64]
    predictions: npt.NDArray[np.int64]
    num_classes: int
    #: :class:`~pytest_unitablate.core.data.PassDigest` of the pass ("" when unknown):
    #: two results are paired (same examples, same order) when their fingerprints agree.
    fingerprint: str = ""
    #: per-example log-probability of the true class (nats, float32); None when the
    #: result was built without it
    logprob: npt.NDArray[np.float32] | None = None
    #: resample ablation with several draws: each example's share of the draws it was
    #: right in (``predictions`` then hold the first draw's); None otherwise
    shares: npt.NDArray[np.float64] | None = None

    @property
    def correct_share(self) -> npt.NDArray[Any]:
        """Per-example correctness: a bool per example, or (several resample draws) the
        share of draws each example was right in."""
        return self.correct if self.shares is None else self.shares

    @property
    def true_logprob(self) -> npt.NDArray[np.float32]:
        """Per-example ``log p(true class)``; raises if the result was built without it."""
        if self.logprob is None:
            raise ValueError("this EvalResult holds no log-probabilities")
        return self.logprob

    @property
    def mean_logprob(self) -> float:
        """Mean log-probability of the true class over all examples (nats, <= 0)."""
        return float(np.mean(self.true_logprob, dtype=np.float64))

    @property
    def n(self) -> int:
        """Number of examples."""
        return int(self.labels.shape[0])

    @property
    def correct(self) -> npt.NDArray[np.bool_]:
        """Per-example top-1 correctness."""
        out: npt.NDArray[np.bool_] = self.predictions == self.labels
        return out

    @property
    def accuracy(self) -> float:
        """Overall top-1 accuracy in [0, 1]."""
        return float(self.correct.mean())

    @property
    def class_counts(self) -> npt.NDArray[np.int64]:
        """Examples per class, shape ``(num_classes,)``."""
        return np.bincount(self.labels, minlength=self.num_classes).astype(np.int64)

    @property
    def class_accuracy(self) -> npt.NDArray[np.float64]:
        """Per-class recall, shape ``(num_classes,)``; NaN where a class has no examples."""
        hits = np.bincount(self.labels[self.correct], minlength=self.num_classes)
        counts = self.class_counts
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(counts > 0, hits / np.maximum(counts, 1), np.nan)

    def class_correct(self, k: int) -> npt.NDArray[np.bool_]:
        """Per-example correctness restricted to the examples labelled ``k``."""
        out: npt.NDArray[np.bool_] = self.correct[self.labels == k]
        return out


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode and disable grads; restore both on exit.

    >>> m = torch.nn.Sequential(torch.nn.Dropout()).train()
    >>> with eval_mode(m):
    ...     m[0].training
    False
    >>> m[0].training
    True
    """
    flags = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        with torch.inference_mode(), no_fast_path():
            yield
    finally:
        for module, flag in flags:
            module.training = flag


@contextmanager
def no_fast_path() -> Iterator[None]:
    """torch's fused attention fast path off inside the block (restored after).

    In eval mode under no-grad, ``nn.TransformerEncoderLayer`` and ``nn.MultiheadAttention``
    may run one fused kernel instead of their submodules, so hooks on those submodules (and
    head ablation) would never run, and an ablated pass would use other kernels than its
    baseline. Every pass runs the ordinary path instead.
    """
    mha = getattr(torch.backends, "mha", None)
    if mha is None or not hasattr(mha, "set_fastpath_enabled"):
        yield
        return
    before = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(before)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a stateless model)."""
    for param in model.parameters():
        return param.device
    for buf in model.buffers():
        return buf.device
    return torch.device("cpu")


def select_logits(out: Any, output: int | str | None = None, *, where: str = "the model"
                  ) -> Any:
    """The logits in a model's output: the output itself, or the part ``output`` names.

    A tuple or list output needs an index unless it holds a single tensor; a dict (or a
    ``ModelOutput``-style object) needs a key unless it has exactly one tensor or a
    ``logits`` entry. Anything else ambiguous is refused rather than guessed.

    >>> t = torch.zeros(2, 3)
    >>> select_logits((torch.zeros(2, 8), t), 1) is t
    True
    >>> select_logits({"logits": t, "features": torch.zeros(2, 8)}) is t
    True
    >>> try:
    ...     select_logits((torch.zeros(2, 8), t))
    ... except OutputError as exc:
    ...     print(str(exc)[:56])
    the model returned a tuple of 2 tensors; say which holds
    """
    if output is None:
        if isinstance(out, torch.Tensor):
            return out
        if isinstance(out, (tuple, list)):
            tensors = [x for x in out if isinstance(x, torch.Tensor)]
            if len(out) == 1:
                return out[0]
            raise OutputError(
                f"{where} returned a {type(out).__name__} of {len(out)} "
                f"{'tensors' if len(tensors) == len(out) else 'values'}; say which holds the "
                f"logits with the spec key output: (an index, e.g. output: 1) or "
                f"evaluate(..., output=1)")
        items = dict(out) if isinstance(out, Mapping) else (
            {k: v for k, v in vars(out).items() if not k.startswith("_")}
            if hasattr(out, "__dict__") else None)
        if items is not None:
            if isinstance(items.get("logits"), torch.Tensor):
                return items["logits"]
            named = {k: v for k, v in items.items() if isinstance(v, torch.Tensor)}
            if len(named) == 1:
                return next(iter(named.values()))
            raise OutputError(
                f"{where} returned a {type(out).__name__} with keys {sorted(items)[:8]}; say "
                f"which holds the logits with the spec key output: (e.g. output: "
                f"{sorted(named)[0] if named else 'logits'})")
        return out
    if isinstance(output, int):
        if not isinstance(out, (tuple, list)):
            raise OutputError(f"output: {output} indexes a tuple, but {where} returned a "
                            f"{type(out).__name__}")
        if output >= len(out):
            raise OutputError(f"output: {output} is out of range: {where} returned "
                            f"{len(out)} values (0..{len(out) - 1})")
        return out[output]
    if isinstance(out, Mapping):
        if output not in out:
            raise OutputError(f"output: {output} is not a key of {where}'s output "
                            f"(keys: {sorted(map(str, out))[:8]})")
        return out[output]
    if not hasattr(out, output):
        raise OutputError(f"output: {output} is not an attribute of {where}'s "
                        f"{type(out).__name__} output")
    return getattr(out, output)


def checked_logits(index: int, produced: Any, labels: torch.Tensor, width: int | None,
                   output: int | str | None = None) -> torch.Tensor:
    """The logits of batch ``index`` out of the model's output, checked.

    Shared by :func:`evaluate` and the scan engines: the logits (picked with ``output``)
    must be a finite ``(N, classes)`` tensor with ``width`` classes (any, when ``None``)
    and every label below that width; each problem is a ``DataError`` (NaN or inf:
    ``NonFiniteLogitsError``) naming the batch.
    """
    logits = select_logits(produced, output, where=f"batch {index}: the model")
    batch = labels.shape[0]
    if not isinstance(logits, torch.Tensor):
        raise DataError(
            f"batch {index}: the model returned {type(logits).__name__}; expected a tensor "
            f"of logits of shape (N, classes)"
        )
    if logits.dim() == 3 and logits.shape[0] == batch:
        raise PositionError(
            f"batch {index}: the model returned logits of shape {tuple(logits.shape)}, a "
            f"language model's (N, T, V): say which position's next token is judged with "
            f"the spec key position: (last, or an index such as -1; the labels are then "
            f"target token ids), or wrap it with core.next_token.next_token(model)")
    if logits.dim() != 2 or logits.shape[0] != batch:
        raise DataError(
            f"batch {index}: the model returned logits of shape {tuple(logits.shape)}; "
            f"expected ({batch}, classes)"
        )
    width = int(logits.shape[1]) if width is None else width
    if logits.shape[1] != width:
        raise DataError(f"batch {index}: logits have {logits.shape[1]} classes, expected {width}")
    finite = torch.isfinite(logits).all(dim=1)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise NonFiniteLogitsError(
            f"batch {index}: the model produced NaN or infinite logits for {bad} of {batch} "
            f"examples"
        )
    top = int(labels.max())
    if top >= width:
        raise DataError(
            f"batch {index}: label {top} is out of range for {width} classes "
            f"(labels must be 0..{width - 1})"
        )
    return logits


def true_logprob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each row's log-probability of its label, ``log_softmax(logits)[label]``, in float32.

    Shared by :func:`evaluate` and every scan engine, so all of them give the same numbers.
    ``logits`` may hold several stacked copies of a batch: ``labels`` then repeats.

    >>> true_logprob(torch.tensor([[0.0, 0.0]]), torch.tensor([1])).tolist()
    [-0.6931471824645996]
    """
    rows = logits.shape[0]
    if labels.shape[0] != rows:
        labels = labels.repeat(rows // labels.shape[0])
    lp = torch.log_softmax(logits.float(), dim=1)
    return lp.gather(1, labels.view(-1, 1).to(lp.device)).squeeze(1)


def logits_agree(ours: Any, real: Any) -> bool:
    """Whether logits a fast path computed match the model's own, as every engine checks
    itself on the first batch: same shape, and within 1e-4 (relative, and absolute on the
    scale of the larger of 1 and the biggest logit).

    >>> logits_agree(torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, 2.00001]]))
    True
    """
    if not isinstance(ours, torch.Tensor) or not isinstance(real, torch.Tensor) \
            or ours.shape != real.shape:
        return False
    scale = float(real.abs().max().clamp_min(1.0))
    return bool(torch.allclose(ours, real, rtol=1e-4, atol=1e-4 * scale))


def evaluate(
    model: nn.Module,
    data: Any,
    *,
    device: torch.device | str | None = None,
    num_classes: int | None = None,
    batch_size: int = 256,
    output: int | str | None = None,
) -> EvalResult:
    """Evaluate ``model`` on ``data`` and return an :class:`EvalResult`.

    ``data`` is anything :func:`pytest_unitablate.data.iter_batches` accepts. ``num_classes``
    defaults to the width of the logits; ``output`` picks the logits out of a tuple, list or
    dict output (see :func:`select_logits`). Raises :class:`~pytest_unitablate.errors.DataError`
    for bad data or logits and :class:`~pytest_unitablate.errors.NonFiniteLogitsError` for
    NaN/inf logits, naming the batch.

    Example::

        result = evaluate(model, loader)
        print(result.accuracy, result.class_accuracy)
    """
    target = torch.device(device) if device is not None else model_device(model)
    preds: list[torch.Tensor] = []
    logprobs: list[torch.Tensor] = []
    labels_seen: list[torch.Tensor] = []
    width: int | None = num_classes
    digest = PassDigest()
    with eval_mode(model):
        for index, (inputs, labels) in enumerate(
            iter_batches(data, batch_size=batch_size, device=target, digest=digest)
        ):
            logits = checked_logits(index, call_model(model, inputs), labels, width,
                                    output)
            width = int(logits.shape[1])
            preds.append(logits.argmax(dim=1))
            logprobs.append(true_logprob(logits, labels))
            labels_seen.append(labels)
    assert width is not None  # iter_batches raises on empty data
    return EvalResult(
        labels=torch.cat(labels_seen).cpu().numpy().astype(np.int64),
        predictions=torch.cat(preds).cpu().numpy().astype(np.int64),
        num_classes=width,
        fingerprint=digest.hexdigest(),
        logprob=torch.cat(logprobs).cpu().numpy().astype(np.float32),
    )


def check_paired(baseline: EvalResult, other: EvalResult, what: str = "the ablated pass",
                 reference: str | None = None) -> None:
    """Raise :class:`~pytest_unitablate.errors.UnpairedDataError` unless ``other`` saw the
    same examples in the same order as ``baseline``.

    Every drop, interval and McNemar p-value compares the two example by example; a
    shuffling loader or random augmentation would pair unrelated examples silently.
    """
    if baseline.fingerprint and other.fingerprint and baseline.fingerprint == other.fingerprint:
        return
    unknown = not baseline.fingerprint or not other.fingerprint
    if unknown and baseline.n == other.n and np.array_equal(baseline.labels, other.labels):
        return
    detail = (f"{baseline.n} examples, then {other.n}" if baseline.n != other.n else
              "the labels come in another order" if not np.array_equal(
                  baseline.labels, other.labels) else "the inputs differ")
    seen = "the baseline's examples in the baseline's order" if reference is None else \
        f"the examples of {reference} in the same order"
    raise UnpairedDataError(
        f"{what} did not see {seen} ({detail}): "
        f"the data changes between passes. Use a DataLoader with shuffle=False and no "
        f"random augmentation (or seed it: the plugin calls torch.manual_seed before "
        f"every pass), so that every pass replays the same examples")
