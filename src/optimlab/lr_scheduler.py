"""Placeholder."""

class LRScheduler:
    pass
