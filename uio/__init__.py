"""The model side of Tome: base model loading, prompts, generation (and, later, UIO memories)."""
