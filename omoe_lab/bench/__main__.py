"""``python -m omoe_lab.bench`` is ``omoe-lab bench``."""
from .cli import main

main()
