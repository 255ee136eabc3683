from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from registry import db
from registry.errors import RegistryNotReady
from registry.models import Base


def downgrade(engine: sa.Engine, revision: str) -> None:
    db.downgrade(engine, revision)


def insert_base_model(conn: sa.Connection) -> None:
    """Base model 1, "bm", written with SQL as an older schema holds it."""
    conn.execute(
        sa.text(
            "insert into base_models (id, name, source, architecture, num_layers,"
            " hidden_size, linear_shapes, created_at)"
            " values (1, 'bm', 'src', 'Llama', 2, 32, '{}', '2026-11-23 00:00:00')"
        )
    )


def insert_generator(conn: sa.Connection, generator_id: int | None = None) -> None:
    """Generator "g" of base model 1 (the next id unless one is given)."""
    column, value = ("id, ", ":id, ") if generator_id is not None else ("", "")
    conn.execute(
        sa.text(
            f"insert into generators ({column}name, base_model_id, method, sha256, blob_key,"
            " size_bytes, training_adapter_ids, hyperparameters, metrics, created_at)"
            f" values ({value}'g', 1, 'sg-lora', :k, :k, 3, '[1, 2]', '{{}}', '{{}}',"
            " '2026-11-23 00:00:00')"
        ),
        {"id": generator_id, "k": "0" * 64},
    )


def test_upgrade_matches_models_and_downgrades(db_url: str) -> None:
    engine = db.make_engine(db_url)
    db.upgrade(engine)
    assert db.current_revision(engine) == db.head_revision(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == [], diff
        assert conn.execute(sa.text("select generation from registry_state")).scalar() == 0
    db.upgrade(engine)  # idempotent

    downgrade(engine, "base")
    assert set(sa.inspect(engine).get_table_names()) <= {"alembic_version"}
    engine.dispose()


def test_generators_migration_keeps_existing_rows(db_url: str) -> None:
    """A database at 0002 (before generators) upgrades and downgrades with its data."""

    engine = db.make_engine(db_url)
    db.upgrade(engine, "0002")
    assert "generators" not in sa.inspect(engine).get_table_names()
    with engine.begin() as conn:
        insert_base_model(conn)
    db.upgrade(engine, "0003")
    assert db.current_revision(engine) == "0003"
    with engine.begin() as conn:
        insert_generator(conn)
    downgrade(engine, "0002")
    assert "generators" not in sa.inspect(engine).get_table_names()
    with engine.connect() as conn:
        assert conn.execute(sa.text("select name from base_models")).scalar() == "bm"
    engine.dispose()


def test_jobs_and_keys_migration_keeps_existing_rows(db_url: str) -> None:
    """A database at 0003 upgrades to 0004 (jobs, job artifacts, API keys) and back
    with its data, and holds one API key per hash."""

    engine = db.make_engine(db_url)
    db.upgrade(engine, "0003")
    tables = set(sa.inspect(engine).get_table_names())
    assert not tables & {"jobs", "job_artifacts", "api_keys"}
    with engine.begin() as conn:
        insert_base_model(conn)
        insert_generator(conn)
    db.upgrade(engine, "0004")
    assert db.current_revision(engine) == "0004"
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "insert into jobs (id, kind, params, state, progress, log, attempts,"
                " max_attempts, worker, lease_expires_at, created_at, started_at, updated_at)"
                " values (7, 'transfer', '{\"adapter_id\": 5}', 'running', 0.5, 'line', 1, 3,"
                " 'w1', '2026-11-23 00:01:00', '2026-11-23 00:00:00', '2026-11-23 00:00:30',"
                " '2026-11-23 00:00:30')"
            )
        )
        conn.execute(
            sa.text(
                "insert into job_artifacts (job_id, name, blob_key, size_bytes, created_at)"
                " values (7, 'stage-1', :k, 3, '2026-11-23 00:00:40')"
            ),
            {"k": "1" * 64},
        )
        conn.execute(
            sa.text(
                "insert into api_keys (name, role, prefix, key_hash, created_at)"
                " values ('ops', 'admin', 'lm_abcdefgh', :h, '2026-11-23 00:00:00')"
            ),
            {"h": "2" * 64},
        )
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:  # one key per hash
        conn.execute(
            sa.text(
                "insert into api_keys (name, role, prefix, key_hash, created_at)"
                " values ('again', 'reader', 'lm_abcdefgh', :h, '2026-11-23 00:00:00')"
            ),
            {"h": "2" * 64},
        )
    with engine.connect() as conn:
        assert conn.execute(sa.text("select state, worker from jobs")).one() == ("running", "w1")
        assert conn.execute(sa.text("select name from job_artifacts")).scalar() == "stage-1"
        assert conn.execute(sa.text("select count(*) from api_keys")).scalar() == 1
    downgrade(engine, "0003")
    tables = set(sa.inspect(engine).get_table_names())
    assert not tables & {"jobs", "job_artifacts", "api_keys"}
    with engine.connect() as conn:
        assert conn.execute(sa.text("select name from generators")).scalar() == "g"
        assert conn.execute(sa.text("select name from base_models")).scalar() == "bm"
    db.upgrade(engine)
    with engine.connect() as conn:
        assert conn.execute(sa.text("select count(*) from jobs")).scalar() == 0
    engine.dispose()


def test_generator_pins_migration_keeps_existing_rows(db_url: str) -> None:
    """A database at 0004 with a generator upgrades to 0005 (generator pins), takes a
    pin, and goes back to 0004 with its generator."""

    engine = db.make_engine(db_url)
    db.upgrade(engine, "0004")
    assert "generator_pins" not in sa.inspect(engine).get_table_names()
    with engine.begin() as conn:
        insert_base_model(conn)
        insert_generator(conn, generator_id=4)
    db.upgrade(engine, "0005")
    assert db.current_revision(engine) == "0005"
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "insert into generator_pins (base_model_id, method, generator_id, pinned_at)"
                " values (1, 'sg-lora', 4, '2026-11-26 00:00:00')"
            )
        )
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:  # one pin per pair
        conn.execute(
            sa.text(
                "insert into generator_pins (base_model_id, method, generator_id, pinned_at)"
                " values (1, 'sg-lora', 4, '2026-11-26 00:00:01')"
            )
        )
    downgrade(engine, "0004")
    assert "generator_pins" not in sa.inspect(engine).get_table_names()
    with engine.connect() as conn:
        assert conn.execute(sa.text("select name from generators")).scalar() == "g"
    engine.dispose()


def test_ended_sessions_migration(db_url: str) -> None:
    """0005 to 0006 adds the logged-out sessions' table, and back removes it."""
    engine = db.make_engine(db_url)
    db.upgrade(engine, "0005")
    db.upgrade(engine, "0006")
    assert db.current_revision(engine) == "0006"
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "insert into ended_sessions (sid, expires_at) values ('s1', '2026-12-02 00:00:00')"
            )
        )
    downgrade(engine, "0005")
    assert "ended_sessions" not in sa.inspect(engine).get_table_names()
    engine.dispose()


def test_adapter_recipes_migration(db_url: str) -> None:
    """0006 to 0007 adds recipes and lets an adapter have no blob; back down is refused
    while an adapter has only its recipe, and allowed once none has."""
    engine = db.make_engine(db_url)
    db.upgrade(engine, "0006")
    db.upgrade(engine, "0007")
    assert db.current_revision(engine) == "0007"
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "insert into base_models (id, name, source, architecture, num_layers,"
                " hidden_size, linear_shapes, created_at) values"
                " (1, 'b', 's', 'llama', 2, 8, '{}', '2026-12-02 00:00:00')"
            )
        )
        conn.execute(
            sa.text(
                "insert into adapters (id, name, description, base_model_id, peft_type, rank,"
                " alpha, target_modules, layout_signature, provenance, config, metrics, meta,"
                " sha256, blob_key, size_bytes, created_at) values (1, 'a', 'd', 1, 'LORA', 4,"
                " 8, '[]', 'x', 'generated', '{}', '{}', '{}', 'h', NULL, 10,"
                " '2026-12-02 00:00:00')"
            )
        )
        conn.execute(
            sa.text(
                "insert into adapter_recipes (adapter_id, generator_id, generator_sha256, seed,"
                " decoder) values (1, 7, 'g', 3, 'sg-lora/1')"
            )
        )
    with pytest.raises(RuntimeError, match="materialise"):
        downgrade(engine, "0006")
    assert db.current_revision(engine) == "0007"
    with engine.begin() as conn:
        conn.execute(sa.text("update adapters set blob_key = 'h'"))
    downgrade(engine, "0006")
    assert "adapter_recipes" not in sa.inspect(engine).get_table_names()
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(sa.text("update adapters set blob_key = NULL"))
    engine.dispose()


def test_job_live_figures_migration(db_url: str) -> None:
    """0007 to 0008 gives jobs their live training figures, and back removes them."""
    engine = db.make_engine(db_url)
    db.upgrade(engine, "0007")
    db.upgrade(engine, "0008")
    assert db.current_revision(engine) == "0008"
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "insert into jobs (id, kind, params, state, progress, log, attempts,"
                " max_attempts, created_at, updated_at, live) values (1, 'k', '{}', 'queued',"
                " 0, '', 0, 3, '2026-12-02 00:00:00', '2026-12-02 00:00:00',"
                " '{\"step\": 3}')"
            )
        )
    downgrade(engine, "0007")
    assert "live" not in {c["name"] for c in sa.inspect(engine).get_columns("jobs")}
    with engine.connect() as conn:
        assert conn.execute(sa.text("select kind from jobs")).scalar() == "k"
    engine.dispose()


ADAPTER = (
    "insert into adapters (id, name, description, base_model_id, peft_type, rank, alpha,"
    " target_modules, layout_signature, provenance, config, metrics, meta, sha256, blob_key,"
    " size_bytes, created_at) values ({id}, 'a{id}', 'd', 1, 'LORA', 4, 8, '[]', 'x', 'zoo',"
    " '{{}}', '{{}}', '{{}}', 'h', 'k', 10, '2026-12-02 00:00:00')"
)
REFERRING = ("adapter_parents", "adapter_artifacts", "description_embeddings")


def test_upgrades_keep_every_row_that_refers_to_an_adapter(db_url: str) -> None:
    """0007 and 0009 rebuild the adapters table on SQLite; its lineage, artifacts and
    embeddings (ON DELETE CASCADE) survive the rebuild, and the schema stays sound."""
    engine = db.make_engine(db_url)
    db.upgrade(engine, "0006")
    with engine.begin() as conn:
        insert_base_model(conn)
        for adapter_id in (1, 2):
            conn.execute(sa.text(ADAPTER.format(id=adapter_id)))
        conn.execute(
            sa.text("insert into adapter_parents (child_id, parent_id, role) values (2, 1, 'e')")
        )
        conn.execute(
            sa.text(
                "insert into adapter_artifacts (adapter_id, name, blob_key, size_bytes)"
                " values (1, 'trajectory.safetensors', 'k2', 5)"
            )
        )
        conn.execute(
            sa.text(
                "insert into description_embeddings (adapter_id, model, dim, vector)"
                " values (2, 'm', 1, :v)"
            ),
            {"v": b"\0\0\0\0"},
        )
    db.upgrade(engine)
    with engine.begin() as conn:
        counts = {t: conn.execute(sa.text(f"select count(*) from {t}")).scalar() for t in REFERRING}
        assert counts == dict.fromkeys(REFERRING, 1)
        # the references still hold: deleting an adapter takes its rows with it
        conn.execute(sa.text("delete from adapters where id = 1"))
        assert conn.execute(sa.text("select count(*) from adapter_parents")).scalar() == 0
    downgrade(engine, "0006")  # and back down, the rows stay too
    with engine.connect() as conn:
        assert conn.execute(sa.text("select count(*) from description_embeddings")).scalar() == 1
    engine.dispose()


def test_a_deleted_adapters_id_is_never_given_again(db_url: str) -> None:
    """Clients and the description index key on adapter ids: the newest adapter's id,
    once deleted, does not go to the next one (a database migrated from 0008 too)."""
    engine = db.make_engine(db_url)
    db.upgrade(engine, "0008")
    with engine.begin() as conn:
        insert_base_model(conn)
        conn.execute(sa.text(ADAPTER.format(id=1)))
    db.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(sa.text(ADAPTER.format(id=2)))
        if engine.dialect.name == "postgresql":  # ids written by hand: the sequence follows
            conn.execute(sa.text("select setval('adapters_id_seq', 2)"))
        conn.execute(sa.text("delete from adapters where id = 2"))
        without_id = ADAPTER.format(id=0).replace("(id, ", "(").replace("(0, 'a0'", "('new'")
        conn.execute(sa.text(without_id))
        assert conn.execute(sa.text("select max(id) from adapters")).scalar() == 3
    engine.dispose()


def test_open_database_migrates_empty_and_refuses_behind(db_url: str) -> None:
    engine = db.open_database(db_url)
    assert db.current_revision(engine) == db.head_revision(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("update alembic_version set version_num = 'old'"))
    with pytest.raises(RegistryNotReady, match="loramint db upgrade"):
        db.open_database(db_url)
    engine.dispose()


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    engine = db.open_database(f"sqlite:///{tmp_path / 'r.db'}")
    with engine.connect() as conn:
        assert conn.execute(sa.text("pragma journal_mode")).scalar() == "wal"
        assert conn.execute(sa.text("pragma foreign_keys")).scalar() == 1


def test_two_processes_opening_a_fresh_database_at_once(db_url: str) -> None:
    """Both processes see an empty database; the migration lock lets one create it."""
    import subprocess
    import sys

    code = "import sys; from registry.db import open_database; open_database(sys.argv[1]).dispose()"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, db_url], stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    for p in procs:
        _, errs = p.communicate(timeout=120)
        assert p.returncode == 0, errs
    engine = db.make_engine(db_url)
    assert db.current_revision(engine) == db.head_revision(engine)
    engine.dispose()


def test_a_transient_sqlite_lock_is_told_apart_from_other_errors(tmp_path: Path) -> None:
    """Real SQLite errors: a file another connection holds exclusively is 'busy'
    (open_database retries it); a missing table is not."""
    import sqlite3

    path = tmp_path / "locked.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x INTEGER)")
    engine = sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": 0})
    try:
        holder.execute("BEGIN EXCLUSIVE")
        with pytest.raises(sa.exc.OperationalError) as busy, engine.connect() as conn:
            conn.execute(sa.text("SELECT * FROM t"))
        assert db._sqlite_busy(busy.value)
        holder.execute("COMMIT")
        with pytest.raises(sa.exc.OperationalError) as missing, engine.connect() as conn:
            conn.execute(sa.text("SELECT * FROM nowhere"))
        assert not db._sqlite_busy(missing.value)
        assert not db._sqlite_busy(None) and not db._sqlite_busy(ValueError("locked"))
    finally:
        engine.dispose()
        holder.close()
