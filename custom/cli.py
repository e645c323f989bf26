"""``python -m custom.cli <command> [--flags]``: the project's command-line tools (:mod:`custom.tools.cli`)."""

from custom.tools.cli import main

if __name__ == "__main__":
    main()
