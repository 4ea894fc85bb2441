"""``python -m echomimic_lib.cli``: the ``echomimic`` command."""
import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
