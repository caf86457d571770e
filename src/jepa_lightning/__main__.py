"""``python -m jepa_lightning``: the same as the ``jepa-lightning`` command."""

from jepa_lightning.cli import main

if __name__ == "__main__":
    main()
