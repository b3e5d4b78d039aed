from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect

from node.db.engine import current_revision, downgrade, upgrade
from node.db.tables import Base


def test_upgrade_matches_the_tables_and_downgrade_removes_them(engine: Engine) -> None:
    upgrade(engine)
    assert current_revision(engine) == "0007"
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())

    downgrade(engine, "base")
    assert current_revision(engine) is None
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}

    upgrade(engine)  # and up again: downgrade left nothing behind that blocks it
    assert current_revision(engine) == "0007"
