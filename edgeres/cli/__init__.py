"""The ``edgeres`` command line: the group (:mod:`.app`), shared options (:mod:`.options`) and one
module per family of commands, each registering itself on the group."""

from edgeres.cli import bundle, convert, device, models, quantize  # noqa: F401  (each registers its commands)
from edgeres.cli.app import cli, main

__all__ = ["cli", "main"]
