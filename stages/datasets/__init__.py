"""Datasets: where the images and labels are, and how one image is decoded."""
