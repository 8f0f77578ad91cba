"""`python -m imageblocks ...`: the `imageblocks` command, for when its script is not on PATH."""

from imageblocks.cli import main

if __name__ == "__main__":
    main()
