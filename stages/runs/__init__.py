"""A trained run's folder: reading it, evaluating, predicting, exporting and reporting."""
