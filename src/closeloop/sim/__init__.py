"""The demo's simulation: a seeded portfolio, simulated customers, a simulated clock."""

from __future__ import annotations

from closeloop.sim.runner import Params, Simulation, summarize, to_json

__all__ = ["Params", "Simulation", "summarize", "to_json"]
