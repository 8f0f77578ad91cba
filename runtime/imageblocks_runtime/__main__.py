"""`python -m imageblocks_runtime ...`: the `imageblocks-runtime` command."""

from imageblocks_runtime.cli import main

if __name__ == "__main__":
    main()
