"""The training-corpus builder (build_corpus.py, markup.py); at run time this folder is also the default data dir."""
