"""Where the LPM looked: the fusion's attention over the kept tokens, put back on the image's patches."""
