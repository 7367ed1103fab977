"""Configuration, command line and orchestration of the two FPT+ stages."""
