"""``python -m lorita`` → the command-line interface."""

from lorita.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
