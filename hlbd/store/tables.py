"""The run store's tables as SQLAlchemy models (the newest schema revision).

The schema itself changes only through Alembic (migrations/versions); these models
mirror the newest revision so the store can build statements from them.
NaN cannot be stored in a SQLite REAL (it becomes NULL), so every metric that may be
NaN has a companion ``*_is_nan`` flag: NULL with the flag set means "measured: NaN",
NULL without it means "not recorded".
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Run(Base):
    __tablename__ = "runs"

    run_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime)
    config: Mapped[str] = mapped_column(Text)
    dataset_stats: Mapped[str] = mapped_column(Text)
    vocab: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    run_dir: Mapped[str | None] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(16))
    source_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    extra: Mapped[str | None] = mapped_column(Text)
    # What a person says of the run, changeable after it ended: a JSON list of labels,
    # and free text (NULL: none).
    tags: Mapped[str | None] = mapped_column(Text)
    notes: Mapped[str | None] = mapped_column(Text)


class Segment(Base):
    __tablename__ = "segments"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.run_id"), primary_key=True)
    segment: Mapped[int] = mapped_column(Integer, primary_key=True)
    start_epoch: Mapped[int] = mapped_column(Integer)
    # Set when the segment continues from a checkpoint taken mid-epoch: the optimizer
    # steps before it (the steps after it that earlier segments recorded are superseded).
    start_step: Mapped[int | None] = mapped_column(BigInteger)
    resumed_from: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(DateTime)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime)
    status: Mapped[str] = mapped_column(String(16))
    pid: Mapped[int | None] = mapped_column(Integer)
    hostname: Mapped[str | None] = mapped_column(String(255))
    # Processes of the segment and the host of each rank (JSON list, rank order).
    world_size: Mapped[int | None] = mapped_column(Integer)
    hosts: Mapped[str | None] = mapped_column(Text)

    # The claim: at most one segment of a run is running, enforced by the database.
    __table_args__ = (Index("ux_segments_one_running", "run_id", unique=True,
                            sqlite_where=text("status = 'running'"),
                            postgresql_where=text("status = 'running'")),)


class Epoch(Base):
    __tablename__ = "epochs"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.run_id"), primary_key=True)
    segment: Mapped[int] = mapped_column(Integer, primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    loss: Mapped[float | None] = mapped_column(Float)
    loss_is_nan: Mapped[bool] = mapped_column(Boolean)
    grad_norm: Mapped[float | None] = mapped_column(Float)
    grad_norm_is_nan: Mapped[bool] = mapped_column(Boolean, default=False)
    grad_norm_max: Mapped[float | None] = mapped_column(Float)
    grad_norm_min: Mapped[float | None] = mapped_column(Float)
    steps: Mapped[int | None] = mapped_column(Integer)
    nonfinite_steps: Mapped[int | None] = mapped_column(Integer)
    clipped_steps: Mapped[int | None] = mapped_column(Integer)
    skipped_steps: Mapped[int | None] = mapped_column(Integer)
    lr: Mapped[float | None] = mapped_column(Float)
    lr_is_nan: Mapped[bool] = mapped_column(Boolean, default=False)
    token_accuracy: Mapped[float | None] = mapped_column(Float)
    wall_seconds: Mapped[float | None] = mapped_column(Float)
    tokens: Mapped[int | None] = mapped_column(BigInteger)
    tokens_per_second: Mapped[float | None] = mapped_column(Float)
    recorded_at: Mapped[datetime | None] = mapped_column(DateTime)  # None: imported
    superseded_by: Mapped[int | None] = mapped_column(Integer)


class Step(Base):
    __tablename__ = "steps"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.run_id"), primary_key=True)
    segment: Mapped[int] = mapped_column(Integer, primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer)
    loss: Mapped[float | None] = mapped_column(Float)
    loss_is_nan: Mapped[bool] = mapped_column(Boolean)
    grad_norm: Mapped[float | None] = mapped_column(Float)
    grad_norm_is_nan: Mapped[bool] = mapped_column(Boolean)
    lr: Mapped[float | None] = mapped_column(Float)
    lr_is_nan: Mapped[bool] = mapped_column(Boolean, default=False)
    superseded_by: Mapped[int | None] = mapped_column(Integer)


class StepRollup(Base):
    """Steps summarised as they are written: one row per stretch of at most
    ``hlbd.store.ROLLUP_STEPS`` consecutive steps of one epoch of one segment (a stretch
    split across two writes is two rows). ``*_count``/``_sum``/``_min``/``_max`` are over
    the finite values; ``*_nonfinite`` counts NaN and Inf. Derived from ``steps``; the
    explorer reads long runs from here."""

    __tablename__ = "step_rollups"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.run_id"), primary_key=True)
    segment: Mapped[int] = mapped_column(Integer, primary_key=True)
    first_step: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_step: Mapped[int] = mapped_column(Integer)
    epoch: Mapped[int] = mapped_column(Integer)
    steps: Mapped[int] = mapped_column(Integer)
    loss_count: Mapped[int] = mapped_column(Integer)
    loss_sum: Mapped[float | None] = mapped_column(Float)
    loss_min: Mapped[float | None] = mapped_column(Float)
    loss_max: Mapped[float | None] = mapped_column(Float)
    loss_nonfinite: Mapped[int] = mapped_column(Integer)
    grad_norm_count: Mapped[int] = mapped_column(Integer)
    grad_norm_sum: Mapped[float | None] = mapped_column(Float)
    grad_norm_min: Mapped[float | None] = mapped_column(Float)
    grad_norm_max: Mapped[float | None] = mapped_column(Float)
    grad_norm_nonfinite: Mapped[int] = mapped_column(Integer)
    lr_count: Mapped[int] = mapped_column(Integer)
    lr_sum: Mapped[float | None] = mapped_column(Float)
    lr_min: Mapped[float | None] = mapped_column(Float)
    lr_max: Mapped[float | None] = mapped_column(Float)
    lr_nonfinite: Mapped[int] = mapped_column(Integer)
    superseded_by: Mapped[int | None] = mapped_column(Integer)


class Point(Base):
    """A value a loop logged under a name of its own (hlbd.Run.log, Run.end_epoch).

    ``scope``: 'step', the value of one optimizer step; 'epoch', a value given as the
    epoch closed (``step``: the steps taken by then); 'skipped', of an attempt GradScaler
    skipped (``step``: the step it was to be)."""

    __tablename__ = "points"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.run_id"), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    scope: Mapped[str] = mapped_column(String(8), primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    segment: Mapped[int] = mapped_column(Integer, primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    value: Mapped[float | None] = mapped_column(Float)
    value_is_nan: Mapped[bool] = mapped_column(Boolean, default=False)
    superseded_by: Mapped[int | None] = mapped_column(Integer)


class Checkpoint(Base):
    __tablename__ = "checkpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.run_id"), index=True)
    segment: Mapped[int] = mapped_column(Integer)
    epoch: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    # Optimizer steps taken when it was recorded (hlbd.Run); NULL: not recorded.
    step: Mapped[int | None] = mapped_column(BigInteger)
    # When hlbd deleted the file (--keep-checkpoints); NULL: not pruned.
    pruned_at: Mapped[datetime | None] = mapped_column(DateTime)


class Evaluation(Base):
    """One value of an evaluation of a run's checkpoint on a dataset file (hlbd eval):
    the same checkpoint bytes, dataset bytes and decoded pairs make one evaluation."""

    __tablename__ = "evaluations"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.run_id"), primary_key=True)
    checkpoint_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    dataset_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    exact_pairs: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    checkpoint: Mapped[str] = mapped_column(Text)
    checkpoint_epoch: Mapped[int] = mapped_column(Integer)
    checkpoint_step: Mapped[int | None] = mapped_column(BigInteger)
    dataset: Mapped[str] = mapped_column(Text)
    pairs: Mapped[int] = mapped_column(Integer)
    seconds: Mapped[float | None] = mapped_column(Float)
    evaluated_at: Mapped[datetime] = mapped_column(DateTime)
    value: Mapped[float | None] = mapped_column(Float)
    value_is_nan: Mapped[bool] = mapped_column(Boolean, default=False)


class Anomaly(Base):
    __tablename__ = "anomalies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.run_id"), index=True)
    segment: Mapped[int] = mapped_column(Integer)
    epoch: Mapped[int | None] = mapped_column(Integer)
    step: Mapped[int | None] = mapped_column(Integer)
    rule: Mapped[str] = mapped_column(String(40))
    value: Mapped[float | None] = mapped_column(Float)
    value_is_nan: Mapped[bool] = mapped_column(Boolean, default=False)
    threshold: Mapped[float | None] = mapped_column(Float)
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    superseded_by: Mapped[int | None] = mapped_column(Integer)
