"""`python -m pykvm` runs the same CLI as the `pykvm` script."""
from pykvm.cli import main

main()
