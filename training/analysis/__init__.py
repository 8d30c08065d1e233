"""`rrg analyze`: soft visual prompts against the word embeddings, attention to the image, attribution maps."""
