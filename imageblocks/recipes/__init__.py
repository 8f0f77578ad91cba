"""Training workflows as library code: from a CSV, the book's recipes, fit-and-export, reports.

The `imageblocks` command parses its arguments and calls these; tests call them directly.
"""
