"""Bridges from other RL frameworks to steprl's pure estimators (optional; nothing here is imported by
steprl itself, and no bridge imports its framework until it is asked to register)."""
