"""``python -m casemate`` = the ``casemate`` command."""

from .cli import main

main()
