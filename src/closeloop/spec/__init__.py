"""The resolution spec: model, loading with positioned errors, CEL rules, summary."""

from __future__ import annotations

from closeloop.spec.explain import explain
from closeloop.spec.loader import CompiledSpec, load_spec, load_spec_file
from closeloop.spec.model import Spec, text_for
from closeloop.spec.rules import CompiledRule, to_cel

__all__ = [
    "CompiledRule",
    "CompiledSpec",
    "Spec",
    "explain",
    "load_spec",
    "load_spec_file",
    "text_for",
    "to_cel",
]
