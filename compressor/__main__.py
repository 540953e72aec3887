"""`python -m compressor ...` runs the `compress` command."""

from .cli import main

main()
