"""`python -m harden ...` is the same as the `harden` console script."""

from harden.cli import main

if __name__ == "__main__":
    main()
