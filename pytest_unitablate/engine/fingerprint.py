"""What identifies a model for the evaluation store's keys: its weights and its code.

Example::

    >>> from torch import nn
    >>> a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    >>> _ = b.load_state_dict(a.state_dict())
    >>> weights_sha256(a) == weights_sha256(b), structure_sha256(a) == structure_sha256(b)
    (True, True)
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
from pathlib import Path

import torch
from torch import nn


def weights_sha256(model: nn.Module) -> str:
    """sha256 over the names and values of every parameter and buffer."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
        value = tensor.detach().cpu().contiguous()
        if value.dtype == torch.bfloat16:  # numpy has no bfloat16: hash the raw bits
            value = value.view(torch.int16)
        elif value.is_quantized:
            value = value.int_repr()
        digest.update(value.numpy().tobytes())
    return digest.hexdigest()


def structure_sha256(model: nn.Module) -> str:
    """sha256 of the model's ``repr`` and of the source files of its own module classes
    (classes outside torch): editing a ``forward`` changes it, so does a new stride."""
    digest = hashlib.sha256(repr(model).encode())
    # keyed by module name and file content, never by where the file lies: a CI cache
    # restored into another checkout folder (another runner, another build directory)
    # must still answer for the same code
    classes: dict[str, type] = {}
    for module in model.modules():
        cls = type(module)
        if not cls.__module__.startswith("torch."):
            classes.setdefault(f"{cls.__module__}.{cls.__qualname__}", cls)
    for name in sorted(classes):
        digest.update(b"\0" + name.encode() + b"\0")
        digest.update(_code_of(classes[name]))
    return digest.hexdigest()


def _code_of(cls: type) -> bytes:
    """The bytes of the file that defines ``cls``; its source where the file cannot be read
    (a notebook cell lives only in linecache); its file name as the last resort."""
    try:
        path = inspect.getsourcefile(cls) or ""
    except TypeError:  # defined where no file is known
        path = ""
    if path:
        with contextlib.suppress(OSError):
            return Path(path).read_bytes()
    with contextlib.suppress(OSError, TypeError):
        return inspect.getsource(cls).encode()
    return path.encode()


__all__ = ["structure_sha256", "weights_sha256"]
