"""``python -m trainer`` / ``accelerate launch -m trainer fit ...``."""
import sys

from .cli import main

sys.exit(main())
