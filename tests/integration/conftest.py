"""Fixtures of the integration tests."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from node.db.engine import SessionFactory, session_factory, upgrade


@pytest.fixture
def sessions(engine: Engine) -> SessionFactory:
    """A session factory on a freshly migrated database (SQLite and PostgreSQL)."""
    upgrade(engine)
    return session_factory(engine)
