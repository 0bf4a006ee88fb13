"""Finding the passages a question needs: embeddings, search over the store's indexes, selection, prompt, citations."""
