"""`python -m personatag.cli`."""

from personatag.cli.root import main

main()
