"""`python -m qerl ...`: the `qerl` command, for environments where the console script is not on PATH."""
from qerl.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
