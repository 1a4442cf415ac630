"""The ``jumeau`` command line."""
