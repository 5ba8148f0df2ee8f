"""The demo's traffic: the product's load generator (bot.engine.load), where the demo and its
tests have always found it."""

from bot.engine.load import LoadGenerator, LoadStats

__all__ = ["LoadGenerator", "LoadStats"]
