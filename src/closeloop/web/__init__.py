"""The HTTP side: the public API (and, as they land, mini-apps and consoles)."""

from __future__ import annotations

from closeloop.web.api import create_api

__all__ = ["create_api"]
