"""Question sets for the compression and retrieval evaluations: real manuals, planted books, pass keys."""
