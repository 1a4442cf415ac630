"""Formats out: the store handed to other tools."""
