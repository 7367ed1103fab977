"""Stage two: training the side network from the cache, one run or a pack of trials."""
