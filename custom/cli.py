"""``python -m custom.cli <command> [--flags]``: the project's command-line tools (:mod:`custom.tools.cli`)."""

from custom.tools.cli import main

if __name__ == "__main__":
    from custom.console import install_excepthook

    install_excepthook(force=True)  # an error ends on one line naming the problem (custom.console)
    main()
