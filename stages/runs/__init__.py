"""A trained run's folder: writing and reading it, its metrics, report and export."""
