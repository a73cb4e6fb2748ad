"""`python -m trainlab.cli ...`: the same as the `trainlab` console script."""

from trainlab.cli import main

main()
