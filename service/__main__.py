"""``python -m service`` is the ``paperloop`` command."""

from service.cli import main

main()
