"""The frozen large pre-trained model: building it, loading checkpoints, scoring its tokens."""
