"""SQLite persistence: the adapter between the pure runtime and the disk.

A block, its txs, receipts, events and its state changes commit in ONE transaction (WAL,
synchronous=FULL): after a crash the store holds whole blocks only, so a tx reported included is
never lost. The state accumulator is stored beside the head, so a restart needs no replay of the
chain; it does hash the state table once against that accumulator, because SQLite keeps no
checksums and a changed value would otherwise be served (and built on) as if it were true.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from umbra import codec
from umbra.chain.runtime import BlockOutcome
from umbra.chain.state import StateRoot
from umbra.chain.types import Block, Event, GenesisConfig, Header

__all__ = ["ReadView", "Store", "StoreCorrupt", "StoreFull", "TxRecord"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS state (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS blocks (
    height INTEGER PRIMARY KEY, hash BLOB NOT NULL UNIQUE, header BLOB NOT NULL, sig BLOB NOT NULL,
    txs BLOB NOT NULL, receipts BLOB NOT NULL, events BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS txs (
    hash BLOB PRIMARY KEY, height INTEGER NOT NULL, idx INTEGER NOT NULL, sender BLOB NOT NULL,
    ok INTEGER NOT NULL, error TEXT, message TEXT) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS txs_by_sender ON txs (sender, height);
CREATE TABLE IF NOT EXISTS blobs (hash BLOB PRIMARY KEY, data BLOB NOT NULL, stored_ms INTEGER NOT NULL) WITHOUT ROWID;
"""

_SCHEMA_VERSION = 1
# Committed state entries kept in memory: the hot accounts of a busy chain fit many times over,
# and a point read from SQLite costs a GIL release and re-acquire that busy threads make slow.
_CACHED_ENTRIES = 65_536
_MAX_HEIGHT = (1 << 63) - 1  # SQLite integers are signed 64-bit: no block lives above this
_HASHES_PER_QUERY = 500  # bound parameters per IN (...) query, well under SQLite's limit


class StoreCorrupt(RuntimeError):
    """The database is damaged or inconsistent: the node must not serve from it."""


class StoreFull(RuntimeError):
    """The disk (or the configured quota) is full: the block was not committed."""


class BlobQuotaFull(StoreFull):
    """The blob store holds its quota: a new blob is refused, and blocks keep committing."""


@dataclass(frozen=True)
class TxRecord:
    tx_hash: bytes
    height: int
    index: int
    sender: bytes
    ok: bool
    error: str | None
    message: str | None


class Store:
    """One SQLite file. A single writer; readers get their own connection per thread.

    Point reads of committed state go through a bounded cache that the writer keeps current: each
    commit writes its changes through under `_cache_lock` and bumps `_generation`, and a reader
    only caches what it fetched from SQLite if no commit happened meanwhile (else the value may
    predate that commit)."""

    def __init__(
        self, path: str | Path, *, max_pages: int | None = None, blob_quota_bytes: int | None = None
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._max_pages = max_pages
        # Blobs arrive from anyone (`PUT /blobs`) and share the chain's file: without a quota,
        # uploads could fill the disk until blocks stop committing.
        self._blob_quota = blob_quota_bytes
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self._cache: dict[bytes, bytes | None] = {}
        self._cache_lock = threading.Lock()
        self._generation = 0
        try:
            self._db = self._connect()
            self._db.executescript(_SCHEMA)
            self._db.commit()
            self._blob_bytes = int(
                self._db.execute("SELECT COALESCE(SUM(length(data)), 0) FROM blobs").fetchone()[0]
            )
        except sqlite3.DatabaseError as exc:
            raise StoreCorrupt(
                f"{self.path} is not a usable Umbra database ({exc}); run `umbra node --check`"
            ) from None
        self._head: Header | None = None
        self._root: StateRoot | None = None
        self._genesis: GenesisConfig | None = None

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=OFF")
        if self._max_pages is not None:
            db.execute(f"PRAGMA max_page_count={int(self._max_pages)}")
        return db

    def _reader(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False, timeout=30)
            self._local.db = db
        return db

    def close(self) -> None:
        self._db.close()

    # ---- meta --------------------------------------------------------------------------------
    def _meta(self, key: str) -> bytes | None:
        try:
            row = self._db.execute("SELECT v FROM meta WHERE k = ?", (key,)).fetchone()
        except sqlite3.DatabaseError as exc:
            raise StoreCorrupt(f"{self.path} is damaged ({exc}); run `umbra node --check`") from None
        return None if row is None else bytes(row[0])

    @property
    def is_empty(self) -> bool:
        return self._meta("genesis") is None

    def genesis(self) -> GenesisConfig:
        if self._genesis is None:
            raw = self._meta("genesis")
            if raw is None:
                raise StoreCorrupt("store has no genesis")
            self._genesis = GenesisConfig.from_cbor(codec.decode(raw))
        return self._genesis

    def head(self) -> Header:
        if self._head is None:
            raw = self._meta("head")
            if raw is None:
                raise StoreCorrupt("store has no head block")
            self._head = Header.from_cbor(codec.decode(raw))
        return self._head

    def root(self) -> StateRoot:
        if self._root is None:
            raw = self._meta("accumulator")
            if raw is None:
                raise StoreCorrupt("store has no state accumulator")
            self._root = StateRoot.from_bytes(raw)
        return self._root

    def _state_accumulator(self) -> StateRoot:
        acc = StateRoot()
        for key, value in self._db.execute("SELECT k, v FROM state"):
            acc.apply(bytes(key), None, bytes(value))
        return acc

    def open_check(self) -> None:
        """Consistency check at start-up: head, accumulator, head block and state table agree."""
        try:
            version = self._meta("schema_version")
            if version is not None and int(codec.decode(version)) != _SCHEMA_VERSION:
                raise StoreCorrupt(f"database schema {codec.decode(version)} is not {_SCHEMA_VERSION}")
            head = self.head()
            if self.root().digest() != head.state_root:
                raise StoreCorrupt("state accumulator does not match the head block's state root")
            stored = self.block(head.height)
            if stored is None or stored.header != head:
                raise StoreCorrupt("head block is missing or differs from the recorded head")
            if self._state_accumulator() != self.root():
                raise StoreCorrupt(
                    f"{self.path}: the state table does not match the state accumulator (a stored value "
                    "changed on disk); run `umbra node --check`"
                )
        except sqlite3.DatabaseError as exc:
            raise StoreCorrupt(f"database is damaged: {exc}") from None
        except (ValueError, KeyError, codec.CodecError) as exc:
            raise StoreCorrupt(f"database holds malformed records: {exc}") from None

    def full_check(self) -> list[str]:
        """Everything `umbra node --check` verifies. Returns the problems found (empty: healthy)."""
        problems: list[str] = []
        try:
            rows = self._db.execute("PRAGMA integrity_check").fetchall()
            if [r[0] for r in rows] != ["ok"]:
                problems.extend(f"sqlite: {r[0]}" for r in rows[:20])
                return problems
            acc = self._state_accumulator()
            if acc != self.root():
                problems.append("state table does not match the stored accumulator")
            head = self.head()
            if acc.digest() != head.state_root:
                problems.append("state table does not match the head block's state root")
            parent: bytes | None = None
            for height, block_hash, header_raw in self._db.execute(
                "SELECT height, hash, header FROM blocks ORDER BY height"
            ):
                header = Header.from_cbor(codec.decode(bytes(header_raw)))
                if header.height != height or header.hash != bytes(block_hash):
                    problems.append(f"block {height}: stored hash or height is inconsistent")
                if parent is not None and header.parent != parent:
                    problems.append(f"block {height}: parent link broken")
                parent = header.hash
            if parent != head.hash:
                problems.append("last stored block is not the recorded head")
        except sqlite3.DatabaseError as exc:
            problems.append(f"sqlite: {exc}")
        except (ValueError, KeyError, codec.CodecError) as exc:
            problems.append(f"malformed record: {exc}")
        except StoreCorrupt as exc:  # a missing head, accumulator or genesis
            problems.append(str(exc))
        return problems

    # ---- state backend -----------------------------------------------------------------------
    def get(self, key: bytes) -> bytes | None:
        return self._cached(key, self._db)

    def iter_prefix(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        upper = _prefix_upper_bound(prefix)
        if upper is None:
            cursor = self._db.execute("SELECT k, v FROM state WHERE k >= ? ORDER BY k", (prefix,))
        else:
            cursor = self._db.execute(
                "SELECT k, v FROM state WHERE k >= ? AND k < ? ORDER BY k", (prefix, upper)
            )
        for key, value in cursor.fetchall():
            yield bytes(key), bytes(value)

    def read(self, key: bytes) -> bytes | None:
        """A state read for API threads (own connection, sees only committed blocks)."""
        return self._cached(key, self._reader())

    def _cached(self, key: bytes, db: sqlite3.Connection) -> bytes | None:
        with self._cache_lock:
            try:
                return self._cache[key]
            except KeyError:
                generation = self._generation
        row = db.execute("SELECT v FROM state WHERE k = ?", (key,)).fetchone()
        value = None if row is None else bytes(row[0])
        with self._cache_lock:
            if generation == self._generation:
                if len(self._cache) >= _CACHED_ENTRIES:
                    self._cache.clear()
                self._cache[key] = value
        return value

    def read_prefix(self, prefix: bytes, limit: int = 10_000) -> list[tuple[bytes, bytes]]:
        upper = _prefix_upper_bound(prefix) or b"\xff" * 64
        rows = self._reader().execute(
            "SELECT k, v FROM state WHERE k >= ? AND k < ? ORDER BY k LIMIT ?", (prefix, upper, limit)
        )
        return [(bytes(k), bytes(v)) for k, v in rows.fetchall()]

    # ---- writes ------------------------------------------------------------------------------
    def init_genesis(self, genesis: GenesisConfig, block: Block, outcome: BlockOutcome) -> None:
        with self._write_lock:
            self._write(block, outcome, genesis=genesis)

    def commit_block(self, block: Block, outcome: BlockOutcome) -> None:
        with self._write_lock:
            self._write(block, outcome)

    def _write(self, block: Block, outcome: BlockOutcome, genesis: GenesisConfig | None = None) -> None:
        header = block.header
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            if genesis is not None:
                db.execute("INSERT INTO meta VALUES ('genesis', ?)", (genesis.encode(),))
                db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (codec.encode(_SCHEMA_VERSION),))
            db.execute(
                "INSERT INTO blocks VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    header.height,
                    header.hash,
                    codec.encode(header.to_cbor()),
                    block.signature,
                    codec.encode(list(block.txs)),
                    codec.encode([r.to_cbor() for r in outcome.receipts]),
                    codec.encode_array(outcome.event_encodings),
                ),
            )
            db.executemany(
                "INSERT OR REPLACE INTO txs VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (r.tx_hash, header.height, r.index, stx.tx.sender, int(r.ok), r.error, r.message)
                    for r, stx in zip(outcome.receipts, outcome.included, strict=True)
                ],
            )
            deletes = [(k,) for k, v in outcome.changes.items() if v is None]
            upserts = [(k, v) for k, v in outcome.changes.items() if v is not None]
            if deletes:
                db.executemany("DELETE FROM state WHERE k = ?", deletes)
            if upserts:
                db.executemany("INSERT OR REPLACE INTO state VALUES (?, ?)", upserts)
            db.execute("INSERT OR REPLACE INTO meta VALUES ('head', ?)", (codec.encode(header.to_cbor()),))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('accumulator', ?)", (outcome.root.to_bytes(),))
            db.execute("COMMIT")
            with self._cache_lock:
                self._generation += 1
                if len(self._cache) + len(outcome.changes) > _CACHED_ENTRIES:
                    self._cache.clear()  # the next reads fill it again
                else:
                    self._cache.update(outcome.changes)
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            if (
                isinstance(exc, sqlite3.OperationalError | sqlite3.DatabaseError)
                and "full" in str(exc).lower()
            ):
                raise StoreFull(f"disk full: block {header.height} was not committed ({exc})") from None
            raise
        self._head = header
        self._root = outcome.root
        if genesis is not None:
            self._genesis = genesis

    # ---- reads for the API -------------------------------------------------------------------
    def block(self, height: int) -> Block | None:
        if not 0 <= height <= _MAX_HEIGHT:
            return None
        row = (
            self._reader()
            .execute("SELECT header, sig, txs FROM blocks WHERE height = ?", (height,))
            .fetchone()
        )
        if row is None:
            return None
        return Block(
            Header.from_cbor(codec.decode(bytes(row[0]))), bytes(row[1]), tuple(codec.decode(bytes(row[2])))
        )

    def raw_blocks(self, start: int, limit: int) -> list[tuple[int, bytes, bytes]]:
        """(height, encoded block, encoded event list) from `start`, for followers and cores."""
        if start > _MAX_HEIGHT:
            return []
        rows = (
            self._reader()
            .execute(
                "SELECT height, header, sig, txs, events FROM blocks WHERE height >= ? ORDER BY height LIMIT ?",
                (start, limit),
            )
            .fetchall()
        )
        out = []
        for height, header, sig, txs, events in rows:
            value = {
                "header": codec.decode(bytes(header)),
                "sig": bytes(sig),
                "txs": codec.decode(bytes(txs)),
            }
            out.append((int(height), codec.encode(value), bytes(events)))
        return out

    # ---- content-addressed blobs ---------------------------------------------------------------
    def put_blob(self, data: bytes, now_ms: int) -> bytes:
        """Store `data` under its SHA-256 (idempotent). Blobs are ciphertext; the chain holds hashes."""
        digest = codec.sha256(data)
        with self._write_lock:
            if self._db.execute("SELECT 1 FROM blobs WHERE hash = ?", (digest,)).fetchone() is not None:
                return digest
            if self._blob_quota is not None and self._blob_bytes + len(data) > self._blob_quota:
                raise BlobQuotaFull(
                    f"the node's blob store holds {self._blob_bytes:,} of its {self._blob_quota:,} bytes: "
                    f"a {len(data):,}-byte blob does not fit"
                )
            try:
                self._db.execute("INSERT INTO blobs VALUES (?, ?, ?)", (digest, data, now_ms))
            except sqlite3.OperationalError as exc:
                if "full" in str(exc).lower():
                    raise StoreFull(f"disk full: blob not stored ({exc})") from None
                raise
            self._blob_bytes += len(data)
        return digest

    def blob(self, digest: bytes) -> bytes | None:
        row = self._reader().execute("SELECT data FROM blobs WHERE hash = ?", (digest,)).fetchone()
        return None if row is None else bytes(row[0])

    def height_of(self, block_hash: bytes) -> int | None:
        row = self._reader().execute("SELECT height FROM blocks WHERE hash = ?", (block_hash,)).fetchone()
        return None if row is None else int(row[0])

    def block_events(self, height: int) -> list[Event]:
        row = self._reader().execute("SELECT events FROM blocks WHERE height = ?", (height,)).fetchone()
        return [] if row is None else [Event.from_cbor(e) for e in codec.decode(bytes(row[0]))]

    def block_receipts(self, height: int) -> list[dict[str, Any]]:
        row = self._reader().execute("SELECT receipts FROM blocks WHERE height = ?", (height,)).fetchone()
        return [] if row is None else list(codec.decode(bytes(row[0])))

    def tx(self, tx_hash: bytes) -> TxRecord | None:
        row = (
            self._reader()
            .execute(
                "SELECT hash, height, idx, sender, ok, error, message FROM txs WHERE hash = ?", (tx_hash,)
            )
            .fetchone()
        )
        if row is None:
            return None
        return TxRecord(bytes(row[0]), int(row[1]), int(row[2]), bytes(row[3]), bool(row[4]), row[5], row[6])

    def included(self, tx_hashes: Iterable[bytes]) -> set[bytes]:
        """Which of `tx_hashes` a committed block includes (a few queries for a whole batch)."""
        wanted = list(tx_hashes)
        found: set[bytes] = set()
        db = self._reader()
        for i in range(0, len(wanted), _HASHES_PER_QUERY):
            chunk = wanted[i : i + _HASHES_PER_QUERY]
            marks = ",".join("?" * len(chunk))
            rows = db.execute(f"SELECT hash FROM txs WHERE hash IN ({marks})", chunk).fetchall()
            found.update(bytes(row[0]) for row in rows)
        return found

    def txs_of(self, sender: bytes, limit: int = 50) -> list[TxRecord]:
        rows = (
            self._reader()
            .execute(
                "SELECT hash, height, idx, sender, ok, error, message FROM txs WHERE sender = ? ORDER BY height DESC, idx DESC LIMIT ?",
                (sender, limit),
            )
            .fetchall()
        )
        return [
            TxRecord(bytes(r[0]), int(r[1]), int(r[2]), bytes(r[3]), bool(r[4]), r[5], r[6]) for r in rows
        ]


def _prefix_upper_bound(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key with `prefix`, or None if there is none."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return None
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


class ReadView:
    """The committed state as a `StateBackend`, read through per-thread reader connections."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def get(self, key: bytes) -> bytes | None:
        return self._store.read(key)

    def iter_prefix(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        return iter(self._store.read_prefix(prefix))
