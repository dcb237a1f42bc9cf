"""The package's version, in a module of its own so that any layer can read it without
importing the package's lazy public API (and what it names for type checkers).

>>> __version__.count(".") >= 2
True
"""

__version__ = "0.3.0.dev0"
