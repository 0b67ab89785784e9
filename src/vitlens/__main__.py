"""`python -m vitlens COMMAND ...`, the same as the `vitlens` command."""
from vitlens.cli.main import main

main()
