"""``python -m exchange`` runs the ``cti-exchange`` command line."""

from exchange.cli import main

if __name__ == "__main__":
    main()
