"""Rollout engines: token-in / token-out generation behind one small interface (registry)."""

from steprl.engines.base import ENGINES, Generation, RolloutEngine, get_engine, register_engine

__all__ = ["ENGINES", "Generation", "RolloutEngine", "get_engine", "register_engine"]
