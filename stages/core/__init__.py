"""The bottom of the stages: settings, errors, devices and files every stage uses."""
