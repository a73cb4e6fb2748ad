"""`python -m trainlab ...`: the same as the `trainlab` console script."""

from trainlab.cli import main

main()
