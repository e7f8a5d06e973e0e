"""The whole benchmark suite; the code lives in ``omoe_lab.bench`` (also ``omoe-lab bench``, ``make bench``).

    python benchmarks/run.py [--part layer peers ...] [--smoke] [--device cuda] [--repeats N] [--threads N]
"""
from omoe_lab.bench import main

if __name__ == "__main__":
    main()
