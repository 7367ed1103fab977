"""Using a trained run: its metrics on a split of the cache, and predictions for new images."""
