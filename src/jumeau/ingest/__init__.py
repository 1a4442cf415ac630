"""Formats in: every connector maps its source into the canonical event model."""
