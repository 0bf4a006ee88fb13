"""What the swappable parts (cache policies, compressors) share: a name -> class registry with "auto" in front.

Each class carries ``name`` (the key) and ``label`` (what a UI shows; empty: the name).
"""
from __future__ import annotations

from typing import Mapping


def choices(registry: Mapping[str, type]) -> tuple[str, ...]:
    """Every accepted name: "auto", then the registered ones in registry order."""
    return ("auto", *registry)


def label(registry: Mapping[str, type], name: str, auto: str) -> str:
    """What a UI shows for ``name``; ``auto`` is the label of "auto"."""
    if name == "auto":
        return auto
    cls = registry[name]
    return cls.label or cls.name
