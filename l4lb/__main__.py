"""Entry point for `python -m l4lb`."""

from l4lb.entry import main

main()
