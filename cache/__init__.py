"""The zarr store that holds stage one's output: layout, writing, reading, identity."""
