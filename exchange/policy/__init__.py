"""Sharing policies and the pure policy engine."""
