"""``python -m controlplane`` is the ``aixds`` command."""

from controlplane.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
