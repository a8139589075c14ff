"""`python -m r1kit ...` (and `torchrun -m r1kit ...`) run the same CLI as the `r1kit` console script."""
from r1kit.cli import main

if __name__ == "__main__":
    main()
