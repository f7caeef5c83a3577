"""``python -m ckptsim.cli``: the same as the ``ckptsim`` command."""
from . import main

main()
