"""Loads every lua/*.lua once and registers it with register_script."""

from __future__ import annotations

from pathlib import Path
from typing import Any

LUA_DIR = Path(__file__).resolve().parents[2] / "lua"


def read_sources(directory: Path = LUA_DIR) -> dict[str, str]:
    return {path.stem: path.read_text() for path in sorted(directory.glob("*.lua"))}


def register_all(client: Any, directory: Path = LUA_DIR) -> dict[str, Any]:
    """Script objects by file stem (`admit`, `settle`, ...), bound to `client`."""
    return {name: client.register_script(source) for name, source in read_sources(directory).items()}
