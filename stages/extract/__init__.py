"""Stage one: run the frozen LPM over the images and fill the cache."""
