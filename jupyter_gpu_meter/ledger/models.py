"""The ledger's tables (SQLAlchemy 2 declarative). Change them only with a migration."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from .types import Money, UTCDateTime

#: constraint names the same on every database, so migrations can refer to them
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


metadata = Base.metadata


class SessionModel(Base):
    """One server run: a container from start to stop, with its GPUs and price snapshot."""

    __tablename__ = "sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: Docker's 64-hex container ID
    container_id: Mapped[str] = mapped_column(String(128), unique=True)
    #: the JupyterHub user name ("user" is a reserved word in PostgreSQL)
    username: Mapped[str] = mapped_column(String(255))
    #: the named server, "" for the default one
    server: Mapped[str] = mapped_column(String(255))
    #: comma-separated GPU UUIDs, "" for CPU only
    gpu_uuids: Mapped[str] = mapped_column(Text)
    gpu_count: Mapped[int] = mapped_column(Integer)
    gpu_model: Mapped[str] = mapped_column(String(255))
    profile: Mapped[str] = mapped_column(String(255))
    #: the image's display name (an ``allowed_images`` key) or reference; "" unknown
    image: Mapped[str] = mapped_column(String(255), server_default="")
    #: the Docker engine's name (``docker info`` Name) it ran on; "" on one host
    node: Mapped[str] = mapped_column(String(255), server_default="")
    # the price snapshot taken when the server started
    price_per_gpu_hour: Mapped[Decimal] = mapped_column(Money)
    cpu_price_per_hour: Mapped[Decimal] = mapped_column(Money)
    currency: Mapped[str] = mapped_column(String(3))
    billing_increment_s: Mapped[int] = mapped_column(Integer)
    minimum_charge: Mapped[Decimal] = mapped_column(Money)
    #: per kWh of the GPUs' energy, in `currency`; 0: energy not charged
    energy_price_per_kwh: Mapped[Decimal] = mapped_column(Money, server_default="0.000000")
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: None while running
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: why it ended ("stopped", "gpu-idle", "budget", ...); None while running
    end_reason: Mapped[str | None] = mapped_column(String(255))
    #: why the hub's meter asked the hub to stop it (a policy's reason), written before
    #: it asked; the close of the node's agent ends it with "stopped: <this>" (cluster
    #: mode). None: no stop asked (or the ask failed)
    stop_reason: Mapped[str | None] = mapped_column(String(255))
    #: the last time the meter saw the container running
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # written when the session closes, from its price snapshot (None while running):
    # what totals add up in SQL instead of reading every session
    #: GPUs × microseconds it ran (:func:`jupyter_gpu_meter.pricing.gpu_microseconds`)
    gpu_microseconds: Mapped[int | None] = mapped_column(BigInteger)
    #: its charge in CHARGE_UNITS parts (:func:`jupyter_gpu_meter.pricing.charge_units`);
    #: both None also where either would not fit 64 bits (charged from the snapshot instead)
    charge_units: Mapped[int | None] = mapped_column(BigInteger)
    # its rollups added up, written when it closes and again whenever a rollup of it is
    # written later (None while running): what busy time and energy totals add up in SQL
    #: readings over its GPUs that measured busy time (none before revision 0006)
    rollup_samples: Mapped[int | None] = mapped_column(BigInteger)
    #: busy GPU-time, ms
    busy_ms: Mapped[int | None] = mapped_column(BigInteger)
    #: its GPUs' energy, mJ (None also where no reading had an energy counter)
    energy_mj: Mapped[int | None] = mapped_column(BigInteger)
    #: that energy's charge at energy_price_per_kwh, in CHARGE_UNITS parts
    energy_units: Mapped[int | None] = mapped_column(BigInteger)
    #: the first and the last minute of its rollups (None without any)
    rollups_from: Mapped[datetime | None] = mapped_column(UTCDateTime)
    rollups_until: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index(None, "username", "started_at"),
        Index(None, "username", "ended_at"),
        Index(None, "started_at"),
        Index(None, "ended_at", "started_at"),
        # a node's open sessions: what the hub closes when the node is lost
        Index(None, "node", "ended_at"),
        # the sessions whose rollups end within a range: busy time and energy totals
        Index(None, "rollups_until"),
        Index(None, "username", "rollups_until"),
        # the sessions whose rollups are not added up: running, mostly
        Index(
            "ix_sessions_unrolled",
            "username",
            sqlite_where=text("rollup_samples IS NULL"),
            postgresql_where=text("rollup_samples IS NULL"),
        ),
        # the few sessions totals must price one by one: running, or too large to sum
        Index(
            "ix_sessions_unsummed",
            "username",
            sqlite_where=text("charge_units IS NULL"),
            postgresql_where=text("charge_units IS NULL"),
        ),
    )


class RollupModel(Base):
    """One meter process's cumulative statistics of one GPU of a session in one minute.

    Each writer (meter process) replaces only its own row; readers merge the
    writers of a minute (sample-weighted mean, max of maxima).
    """

    __tablename__ = "rollups"

    session_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True
    )
    gpu_uuid: Mapped[str] = mapped_column(String(128), primary_key=True)
    #: the minute's start, UTC
    minute: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    #: the meter process that wrote the row
    writer: Mapped[str] = mapped_column(String(128), primary_key=True)
    samples: Mapped[int] = mapped_column(Integer)
    #: mean GPU utilization over the samples, percent
    util_mean: Mapped[float] = mapped_column(Float)
    util_max: Mapped[int] = mapped_column(Integer)
    memory_max_bytes: Mapped[int] = mapped_column(BigInteger)
    #: busy GPU-time in the minute: busy% / 100 × each tick's time, ms
    busy_ms: Mapped[int] = mapped_column(BigInteger, server_default="0")
    #: the GPU's energy in the minute (its counter's deltas), mJ; None: no counter read
    energy_mj: Mapped[int | None] = mapped_column(BigInteger)
    #: where busy% came from: "utilization" or "sm-activity" (GPM); "" in rows written
    #: before busy time was measured (ledger revision 0006): their busy time is unknown
    busy_source: Mapped[str] = mapped_column(String(16), server_default="")

    __table_args__ = (
        # a running session's last minutes: what the hub's policies read in cluster mode
        Index(None, "session_id", "minute"),
    )


class ProcessUsageModel(Base):
    """One meter process's cumulative figures of one process group of a session.

    Each writer replaces only its own row; readers merge the writers (sums,
    max of maxima).
    """

    __tablename__ = "process_usage"

    session_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True
    )
    #: the process name ("python", "torchrun"), "unknown" or "other"
    process_group: Mapped[str] = mapped_column(String(64), primary_key=True)
    writer: Mapped[str] = mapped_column(String(128), primary_key=True)
    #: ticks the group was seen in
    samples: Mapped[int] = mapped_column(Integer)
    #: GPU-time the group held a context, summed over its processes and GPUs, ms
    present_ms: Mapped[int] = mapped_column(BigInteger)
    #: sm_utilization / 100 × that time, ms
    busy_ms: Mapped[int] = mapped_column(BigInteger)
    #: peak of the group's memory over its processes and GPUs at one tick
    memory_max_bytes: Mapped[int] = mapped_column(BigInteger)
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime)


class StateModel(Base):
    """Small facts the meter keeps between runs, e.g. the time of the last Docker event."""

    __tablename__ = "meter_state"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class DecisionModel(Base):
    """A policy's decision about one server (stop, warn, keep alive) and its outcome."""

    __tablename__ = "decisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    username: Mapped[str] = mapped_column(String(255))
    server: Mapped[str] = mapped_column(String(255))
    container_id: Mapped[str] = mapped_column(String(128))
    #: "gpu-idle", "max-age", "budget", "keep-alive", ...
    policy: Mapped[str] = mapped_column(String(64))
    #: "stop", "warn", ...
    action: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)
    dry_run: Mapped[bool] = mapped_column(Boolean)
    #: "stopped", "would stop (dry run)", "failed: <error>", "reported activity", ...
    outcome: Mapped[str] = mapped_column(Text)

    __table_args__ = (
        Index(None, "username", "at"),
        Index(None, "at"),
        # a retried write of the same decision adds nothing
        UniqueConstraint("container_id", "policy", "at"),
    )


class BudgetModel(Base):
    """A budget in force: an amount per period for a user, or for each member of a group."""

    __tablename__ = "budgets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: "user" or "group"
    scope: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(255))
    amount: Mapped[Decimal] = mapped_column(Money)
    #: "money" or "gpu-hours"
    unit: Mapped[str] = mapped_column(String(16))
    #: ISO 4217 for money, None for GPU-hours
    currency: Mapped[str | None] = mapped_column(String(3))
    #: "month" or "rolling:<days>"
    period: Mapped[str] = mapped_column(String(32))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_by: Mapped[str] = mapped_column(String(255))

    __table_args__ = (UniqueConstraint("scope", "name"),)


class BudgetChangeModel(Base):
    """Every change to a budget: set, grant (extra for the current period), remove."""

    __tablename__ = "budget_changes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: who made the change ("by" is a keyword in SQL)
    changed_by: Mapped[str] = mapped_column(String(255))
    scope: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(255))
    #: "set", "grant" or "remove"
    change: Mapped[str] = mapped_column(String(16))
    amount: Mapped[Decimal | None] = mapped_column(Money)
    unit: Mapped[str | None] = mapped_column(String(16))
    currency: Mapped[str | None] = mapped_column(String(3))
    period: Mapped[str | None] = mapped_column(String(32))
    note: Mapped[str] = mapped_column(Text)

    __table_args__ = (Index(None, "scope", "name", "at"),)


class StoragePeriodModel(Base):
    """One measured volume (a home or a snapshot) over one measurement period.

    The period runs from the volume's previous measurement (or its creation)
    to this one, billed at the size measured now and the storage price in
    force then (a snapshot, like a session's).
    """

    __tablename__ = "storage_periods"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: the user the volume belongs to (its label)
    username: Mapped[str] = mapped_column(String(255))
    #: the Docker volume's name
    volume: Mapped[str] = mapped_column(String(255))
    #: "home" or "snapshot"
    kind: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: when it was measured
    ended_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: the size measured at ended_at, bytes (apparent size, as Docker reports it)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    price_per_gb_month: Mapped[Decimal] = mapped_column(Money)
    currency: Mapped[str] = mapped_column(String(3))
    #: size × duration in byte-hours, rounded (:func:`jupyter_gpu_meter.pricing.storage_sums`)
    byte_hours: Mapped[int | None] = mapped_column(BigInteger)
    #: the charge in STORAGE_CHARGE_UNITS parts, rounded; both None where beyond 64 bits
    charge_units: Mapped[int | None] = mapped_column(BigInteger)

    __table_args__ = (
        # a retried write of the same measurement adds nothing
        UniqueConstraint("volume", "started_at"),
        Index(None, "volume", "ended_at"),
        Index(None, "username", "ended_at"),
        Index(None, "ended_at"),
    )


class SSHKeyModel(Base):
    """A user's SSH public key, checked (:func:`jupyter_gpu_meter.ssh.parse_public_key`)."""

    __tablename__ = "ssh_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(255))
    #: ``SHA256:…``, as ``ssh-keygen -lf`` prints it
    fingerprint: Mapped[str] = mapped_column(String(64))
    key_type: Mapped[str] = mapped_column(String(64))
    #: ``"<type> <base64 blob>"``: the authorized_keys line without its comment
    public_key: Mapped[str] = mapped_column(Text)
    comment: Mapped[str] = mapped_column(String(255))
    added_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (UniqueConstraint("username", "fingerprint"),)


class NodeModel(Base):
    """A GPU server's meter agent: its GPUs and its last heartbeat (cluster mode)."""

    __tablename__ = "nodes"

    #: the Docker engine's name (``docker info`` Name = the Swarm node's hostname)
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    #: JSON list of ``{"uuid", "index", "model", "memory_total_bytes"}`` as the agent found them
    gpus: Mapped[str] = mapped_column(Text)
    agent_version: Mapped[str] = mapped_column(String(64))
    agent_started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: the agent's own heartbeat interval, s: how the hub knows it is late
    heartbeat_interval_s: Mapped[float] = mapped_column(Float)
    #: when the hub declared it lost (None: reporting); cleared by its next heartbeat
    lost_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


# --- which user and server names the ledger can store ----------------------

#: every column that holds a JupyterHub user, group or server name
NAME_COLUMNS = (
    SessionModel.__table__.c.username,
    SessionModel.__table__.c.server,
    DecisionModel.__table__.c.username,
    DecisionModel.__table__.c.server,
    BudgetModel.__table__.c.name,
    BudgetChangeModel.__table__.c.name,
    BudgetChangeModel.__table__.c.changed_by,
    StoragePeriodModel.__table__.c.username,
    SSHKeyModel.__table__.c.username,
)
#: the most characters a name may have: PostgreSQL refuses longer (SQLite does not check)
NAME_MAX_LENGTH = min(column.type.length for column in NAME_COLUMNS)
#: what is allowed, in words, for messages
NAME_RULE = f"at most {NAME_MAX_LENGTH} characters of valid Unicode, without NUL characters"


def name_problem(name: str) -> str | None:
    """Why the ledger cannot store this user or server name; None when it can. Pure.

    The rule holds on both databases the ledger runs on (the spawner refuses
    such names before a start, so no server runs that the meter cannot
    record): PostgreSQL refuses a name longer than its ``VARCHAR`` columns
    and a NUL character in any text; neither database can encode a lone
    surrogate as UTF-8. (A PostgreSQL ledger needs a UTF8 database.)
    """
    if not isinstance(name, str):
        return f"it is a {type(name).__name__}, not text"
    if len(name) > NAME_MAX_LENGTH:
        return (
            f"it has {len(name)} characters and the ledger's columns hold at most "
            f"{NAME_MAX_LENGTH} (PostgreSQL refuses longer)"
        )
    if "\x00" in name:
        return "it contains a NUL character, which PostgreSQL cannot store in text"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "it is not valid Unicode (a lone surrogate), which cannot be encoded as UTF-8"
    return None
