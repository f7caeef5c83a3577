"""``python -m ckptsim``: the same as the ``ckptsim`` command."""
from .cli import main

main()
