"""Entry point for `python -m l4lb`."""

from l4lb.cli import main

main()
