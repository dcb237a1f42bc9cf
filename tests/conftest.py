"""Shared by every test folder: this folder is on ``sys.path`` (pytest puts a conftest's
folder there), so ``tiny_source`` (the hand-built model the plugin and engine tests write
into their temporary folders) and ``no_pytest`` (a process that cannot import pytest)
import from any test module."""
