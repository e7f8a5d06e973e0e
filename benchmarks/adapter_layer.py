"""Benchmark of one adapted layer; the code lives in ``omoe_lab.benchmark`` (also ``omoe-lab bench``)."""
from omoe_lab.benchmark import main

if __name__ == "__main__":
    main()
