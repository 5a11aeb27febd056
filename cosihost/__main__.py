"""``python -m cosihost`` is the ``cosihost`` command."""

from .cli import main

main(prog_name="cosihost")
