"""Composition: the runtime, dispatchers and customer service wired from Settings."""

from __future__ import annotations

from closeloop.app.bootstrap import App, build, settle_heap
from closeloop.app.dispatch import Dispatcher, RetryPolicy
from closeloop.app.runtime import IntakeResult, Runtime, TriggerIn, Workflows
from closeloop.app.service import CustomerService, Visit
from closeloop.app.settings import Settings

__all__ = [
    "App",
    "CustomerService",
    "Dispatcher",
    "IntakeResult",
    "RetryPolicy",
    "Runtime",
    "Settings",
    "TriggerIn",
    "Visit",
    "Workflows",
    "build",
    "settle_heap",
]
