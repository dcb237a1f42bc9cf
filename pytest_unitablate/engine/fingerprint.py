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
    files: dict[str, str] = {}
    for module in model.modules():
        cls = type(module)
        if not cls.__module__.startswith("torch."):
            try:
                files[cls.__module__] = inspect.getsourcefile(cls) or ""
            except TypeError:  # a class defined in the interpreter: no file
                files[cls.__module__] = ""
    for name in sorted(files):
        digest.update(b"\0" + name.encode() + b"\0")
        if files[name]:
            with contextlib.suppress(OSError):
                digest.update(Path(files[name]).read_bytes())
    return digest.hexdigest()


__all__ = ["structure_sha256", "weights_sha256"]
