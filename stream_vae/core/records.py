"""The input contract: bytes from Kafka (or rows from a file) into typed, validated records.

A message value is a JSON object ``{"series_id": "pump-17", "ts": 1700000000.0, "values": [...]}``.
``values`` may be a list (in the model's feature order) or an object keyed by feature name;
``series_id`` may be omitted when the message key carries it; ``ts`` is epoch seconds or an
ISO-8601 string. Anything else raises :class:`~stream_vae.errors.RecordError` with a reason.

Examples
--------
>>> r = decode(b"pump-1", b'{"ts": 10, "values": {"b": 2, "a": 1}}', ("a", "b"))
>>> r.series_id, r.ts, r.values.tolist()
('pump-1', 10.0, [1.0, 2.0])
>>> decode(None, b'{"ts": 10, "values": [1]}', ("a", "b"))
Traceback (most recent call last):
...
stream_vae.errors.RecordError: missing_field: no series_id in the body and no message key
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any

import numpy as np
import numpy.typing as npt

from .. import _json
from ..errors import RecordError

__all__ = [
    "REASONS",
    "FieldMap",
    "Record",
    "RecordBatch",
    "RecordDecoder",
    "decode",
    "encode",
    "outcome",
    "parse_ts",
]

# The closed set of reasons a record is rejected with (dead-letter header, metric label).
REASONS = (
    "bad_json",
    "bad_encoding",  # a binary format (Avro, a schema registry's wire format) that does not decode
    "unknown_schema",  # a schema id the registry does not have
    "missing_field",
    "wrong_arity",
    "unknown_feature",
    "nan_value",
    "bad_timestamp",
    "bad_series_id",
    "bad_value",
    "oversized",
)

# A series id is a Kafka key and a metric-free label; 256 bytes is plenty and bounds memory.
MAX_SERIES_ID_BYTES = 256

FloatArray = npt.NDArray[np.float32]
_F32_MAX = float(np.finfo(np.float32).max)

_NON_FINITE_LITERAL = re.compile(rb"(?<![\w\"])-?(NaN|Infinity)(?![\w\"])")
_NON_FINITE = frozenset({"nan", "inf", "infinity"})


@dataclass(frozen=True, slots=True)
class Record:
    """One validated observation of one series: ``values`` has shape ``(d,)``, float32."""

    series_id: str
    ts: float  # epoch seconds
    values: FloatArray  # (d,)


@dataclass(frozen=True, slots=True)
class RecordBatch:
    """Many records in arrival order, column-wise: the unit the core works on."""

    series_ids: tuple[str, ...]
    ts: npt.NDArray[np.float64]  # (n,)
    values: FloatArray  # (n, d)

    def __len__(self) -> int:
        return len(self.series_ids)

    @classmethod
    def from_records(cls, records: Sequence[Record], n_features: int) -> RecordBatch:
        """Stack records (all with ``n_features`` values) into one batch."""
        n = len(records)
        values = np.empty((n, n_features), dtype=np.float32)
        ts = np.empty(n, dtype=np.float64)
        for i, r in enumerate(records):
            values[i] = r.values
            ts[i] = r.ts
        return cls(tuple(r.series_id for r in records), ts, values)

    def slice(self, start: int, stop: int) -> RecordBatch:
        """Rows ``start:stop`` (views of the arrays)."""
        return RecordBatch(
            self.series_ids[start:stop], self.ts[start:stop], self.values[start:stop]
        )

    def in_time_order(self) -> RecordBatch:
        """The rows sorted by ``ts`` (stable: ties keep their order), as a stream replays a file
        whose rows need not be in time order."""
        order = np.argsort(self.ts, kind="stable")
        return RecordBatch(
            tuple(self.series_ids[i] for i in order), self.ts[order], self.values[order]
        )

    def in_series_time_order(self) -> tuple[RecordBatch, int]:
        """The rows of each series sorted by ``ts`` (stable) in the places that series holds,
        so how the series interleave is kept; and how many rows moved (0: ``self`` returned).

        A file scored as a stream must be in time order within each series (a row older than
        its series' last one is late and skipped); across series, file order is kept.

        >>> b = RecordBatch(("a", "b", "a", "b"), np.array([2.0, 5.0, 1.0, 6.0]), np.zeros((4, 1)))
        >>> s, moved = b.in_series_time_order()
        >>> s.series_ids, s.ts.tolist(), moved
        (('a', 'b', 'a', 'b'), [1.0, 5.0, 2.0, 6.0], 2)
        """
        codes: dict[str, int] = {}
        series = np.fromiter(
            (codes.setdefault(s, len(codes)) for s in self.series_ids), np.int64, len(self)
        )
        by_time = np.argsort(self.ts, kind="stable")
        rows = by_time[np.argsort(series[by_time], kind="stable")]  # by series, then by time
        order = np.empty_like(rows)
        order[np.argsort(series, kind="stable")] = rows  # a series' places, in file order
        moved = int(np.count_nonzero(order != np.arange(len(self))))
        if not moved:
            return self, 0
        return (
            RecordBatch(
                tuple(self.series_ids[i] for i in order), self.ts[order], self.values[order]
            ),
            moved,
        )

    def records(self) -> Iterator[Record]:
        for i, sid in enumerate(self.series_ids):
            yield Record(sid, float(self.ts[i]), self.values[i])


def parse_ts(raw: Any) -> float:
    """Epoch seconds from a number or an ISO-8601 string (naive strings are taken as UTC)."""
    if isinstance(raw, bool):
        raise RecordError("bad_timestamp", f"timestamp must be a number or ISO-8601, got {raw!r}")
    if isinstance(raw, int | float):
        try:
            ts = float(raw)
        except OverflowError:  # an int past float64's range
            raise RecordError("bad_timestamp", "timestamp out of range") from None
    elif isinstance(raw, str):
        try:
            ts = float(raw)
        except ValueError:
            try:
                dt = datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
            except ValueError:
                raise RecordError("bad_timestamp", f"cannot parse timestamp {raw!r}") from None
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=UTC)
            ts = dt.timestamp()
    else:
        raise RecordError("bad_timestamp", f"timestamp must be a number or ISO-8601, got {raw!r}")
    if not math.isfinite(ts):
        raise RecordError("bad_timestamp", f"timestamp is not finite: {raw!r}")
    return ts


def _values(raw: Any, feature_names: Sequence[str], index: dict[str, int]) -> FloatArray:
    d = len(feature_names)
    if isinstance(raw, list):
        if len(raw) != d:
            raise RecordError("wrong_arity", f"expected {d} values, got {len(raw)}")
        items = raw
    elif isinstance(raw, dict):
        unknown = [k for k in raw if k not in index]
        if unknown:
            raise RecordError("unknown_feature", f"unknown feature(s) {sorted(unknown)[:5]}")
        if len(raw) != d:
            missing = [f for f in feature_names if f not in raw]
            raise RecordError("wrong_arity", f"missing feature(s) {missing[:5]}")
        items = [raw[f] for f in feature_names]
    else:
        raise RecordError(
            "bad_value", f"values must be a list or an object, got {type(raw).__name__}"
        )
    if all(type(v) is float or type(v) is int for v in items):
        # The common case, checked in Python: for a few values, NumPy's per-call overhead is
        # most of a record's decoding (5.6 µs of 7.6 µs at 8 features; bench/decode.py).
        try:
            finite = all(map(math.isfinite, items))
            largest = max(map(abs, items), default=0.0)
        except OverflowError:  # an int past float64's range
            raise RecordError("bad_value", "a value does not fit in float32") from None
        if not finite:
            raise RecordError("nan_value", "values contain NaN or infinity")
        if largest > _F32_MAX:
            raise RecordError("bad_value", "a value does not fit in float32")
        return np.array(items, dtype=np.float64).astype(np.float32)
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in items):
        if any(isinstance(v, str) and v.strip().lower().lstrip("+-") in _NON_FINITE for v in items):
            raise RecordError("nan_value", "values contain NaN or infinity (as strings)")
        raise RecordError("bad_value", "every value must be a number")
    try:
        arr = np.asarray(items, dtype=np.float64)
    except OverflowError:  # an int past float64's range (orjson reads those as floats)
        raise RecordError("bad_value", "a value does not fit in float32") from None
    if not np.isfinite(arr).all():
        raise RecordError("nan_value", "values contain NaN or infinity")
    # Finite float64 can still overflow float32; the model works in float32.
    if np.abs(arr).max(initial=0.0) > np.finfo(np.float32).max:
        raise RecordError("bad_value", "a value does not fit in float32")
    return arr.astype(np.float32)


@dataclass(frozen=True, slots=True)
class FieldMap:
    """Where a record's parts are in a message whose names are not the contract's: the series
    id, the timestamp, and the values, either one field (a list, or an object keyed by feature)
    or, with ``features``, each model feature from its own top-level field."""

    series_id: str = "series_id"
    ts: str = "ts"
    values: str = "values"
    features: tuple[tuple[str, str], ...] = ()  # (model feature, message field)


class RecordDecoder:
    """Decodes messages for one model's feature names (the name → column index built once).

    JSON by default; :meth:`record` validates a message already parsed into an object, which
    the binary formats (:mod:`stream_vae.core.formats`) use."""

    def __init__(
        self,
        feature_names: Sequence[str],
        *,
        max_bytes: int = 1 << 20,
        fields: FieldMap = FieldMap(),
    ) -> None:
        self.feature_names = tuple(feature_names)
        self.max_bytes = max_bytes
        self.fields = fields
        self._index = {f: i for i, f in enumerate(self.feature_names)}
        # with per-feature fields: the message field of each model feature, in model order
        by_name = dict(fields.features)
        unmapped = [f for f in self.feature_names if f not in by_name] if by_name else []
        if unmapped:
            raise ValueError(f"FieldMap.features does not map the model's features {unmapped}")
        self._fields_in_order = [by_name[f] for f in self.feature_names] if by_name else None

    @property
    def value_fields(self) -> tuple[str, ...] | None:
        """With per-feature fields, the message field of each model feature, in model order."""
        return None if self._fields_in_order is None else tuple(self._fields_in_order)

    def many(
        self, keys: Sequence[bytes | None], values: Sequence[bytes | None]
    ) -> list[Record | RecordError]:
        """Each message decoded, or the reason it cannot be (aligned with ``values``).

        Each message is parsed, then the batch is checked as one array when every value is a
        JSON number (:meth:`bodies`). A message that holds ``true`` or ``false`` anywhere (a
        bool would pass as a number in the array), fails to parse or is not an object goes
        through :meth:`__call__`, which names the reason.
        """
        payloads: list[Any] = []
        max_bytes = self.max_bytes
        for key, value in zip(keys, values, strict=True):
            body = None
            if (
                value is not None
                and len(value) <= max_bytes
                and b"true" not in value
                and b"false" not in value
            ):
                with contextlib.suppress(_json.JSONDecodeError):  # the outcome says why
                    body = _json.loads(value)
            payloads.append(body if type(body) is dict else outcome(self, key, value))
        return self.bodies(keys, payloads, typed=False)

    def bodies(
        self, keys: Sequence[bytes | None], payloads: list[Any], *, typed: bool
    ) -> list[Record | RecordError]:
        """Records from ``payloads``, one per message: its parsed body (a dict), or its outcome
        already (a Record or a RecordError). The bodies are checked as one array (the common
        case: bench/decode.py) when their values are all numbers: ``typed``, a schema says so
        (Avro, Protobuf); otherwise (JSON) the array must come out numeric by itself. When one
        is refused, or has another shape, every body is checked one at a time by
        :meth:`record`, which names the reasons."""
        out: list[Any] = list(payloads)
        good = [i for i, p in enumerate(payloads) if type(p) is dict]
        if good:
            batch = self._body_columns([payloads[i] for i in good], typed)
            if batch is not None:
                sids, ts, values = batch.series_ids, batch.ts.tolist(), batch.values
                for j, i in enumerate(good):
                    out[i] = Record(sids[j], ts[j], values[j])
                return out
        for i in good:
            try:
                out[i] = self.record(keys[i], payloads[i])
            except RecordError as exc:
                out[i] = exc
        return out

    def _in_order(self, values: Sequence[Any]) -> Sequence[Any] | None:
        """Values as lists, or as objects keyed by exactly the model's features (their values
        in model order; a missing key raises KeyError); None for any other mix."""
        if not values or type(values[0]) is not dict:
            return values
        names = self.feature_names
        if not all(type(v) is dict and len(v) == len(names) for v in values):
            return None  # a key too many or too few: the per-record checks name it
        get = itemgetter(*names)
        return [get(v) for v in values] if len(names) > 1 else [(v[names[0]],) for v in values]

    def _body_columns(self, bodies: list[dict[str, Any]], typed: bool) -> RecordBatch | None:
        """The bodies as one checked batch (:meth:`columns`), or None when one of them needs
        the per-record checks (a field missing, a value that is not a number, one refused)."""
        f, fields = self.fields, self._fields_in_order
        try:
            if fields is not None:
                cols = list(zip(*map(itemgetter(f.series_id, f.ts, *fields), bodies), strict=True))
                raw: Any = cols[2:]  # (d, n)
            else:
                cols = list(zip(*map(itemgetter(f.series_id, f.ts, f.values), bodies), strict=True))
                raw = self._in_order(cols[2])  # (n, d)
                if raw is None:
                    return None
            # a schema's floats convert as they are; JSON's must already be numbers (a string,
            # a null or an object makes the array a string or object one: refused)
            values = np.array(raw, dtype=np.float64) if typed else np.array(raw)
        except (KeyError, TypeError, ValueError, OverflowError):  # ragged, missing: ValueError
            return None
        if values.dtype.kind not in "fi":
            return None
        if fields is not None:
            values = values.T
        return self.columns(cols[0], cols[1], values.astype(np.float64, copy=False))

    def check_size(self, value: bytes | None) -> bytes:
        """The message value, unless it is a tombstone or past ``max_bytes``."""
        if value is None:
            raise RecordError("bad_json", "empty message value (tombstone)")
        if len(value) > self.max_bytes:
            raise RecordError("oversized", f"{len(value)} bytes > limit {self.max_bytes}")
        return value

    def __call__(self, key: bytes | None, value: bytes | None) -> Record:
        """Decode one message into a :class:`Record` or raise :class:`RecordError`."""
        value = self.check_size(value)
        try:
            body = _json.loads(value)
        except _json.JSONDecodeError as exc:
            # Python's json module writes NaN and Infinity as bare words, which are not JSON: say
            # what the producer sent rather than just "bad JSON".
            if _NON_FINITE_LITERAL.search(value):
                raise RecordError(
                    "nan_value", "NaN or Infinity in the message (not valid JSON)"
                ) from None
            raise RecordError("bad_json", str(exc)) from None
        if not isinstance(body, dict):
            raise RecordError("bad_json", f"expected a JSON object, got {type(body).__name__}")
        return self.record(key, body)

    def record(self, key: bytes | None, body: dict[str, Any]) -> Record:
        """Validate one parsed message (named as :attr:`fields` says) into a :class:`Record`."""
        f = self.fields
        sid = self._series_id(key, body.get(f.series_id))
        if f.ts not in body:
            raise RecordError("missing_field", f"no {f.ts!r} field")
        if self._fields_in_order is not None:
            try:
                raw: Any = [body[field] for field in self._fields_in_order]
            except KeyError as exc:
                raise RecordError("missing_field", f"no {exc.args[0]!r} field") from None
        elif f.values not in body:
            raise RecordError("missing_field", f"no {f.values!r} field")
        else:
            raw = body[f.values]
        return Record(sid, parse_ts(body[f.ts]), _values(raw, self.feature_names, self._index))

    @staticmethod
    def _series_id(key: bytes | None, sid: Any) -> str:
        """The record's series id, or its message key's when the body has none."""
        if sid is None:
            if not key:
                raise RecordError("missing_field", "no series_id in the body and no message key")
            try:
                sid = key.decode("utf-8")
            except UnicodeDecodeError:
                raise RecordError("bad_series_id", "message key is not UTF-8") from None
        if not isinstance(sid, str) or not sid or len(sid.encode()) > MAX_SERIES_ID_BYTES:
            raise RecordError(
                "bad_series_id", f"series_id must be a non-empty string ≤ 256 bytes: {sid!r}"
            )
        return sid

    def batch(self, rows: Sequence[tuple[str, Any, Any]]) -> RecordBatch:
        """Validate (series id, ts, values) rows into one batch, in order, or raise the first
        bad row's :class:`RecordError` (named as :meth:`record` names it).

        For callers whose values are already floats (a schema said so: pydantic, an Avro
        ``double``): when every row's values are a list of d of them, the checks run on the
        whole (n, d) array at once (:meth:`columns`); a row they refuse, or any other row
        shape, goes through the checks :meth:`record` runs, the one place the reasons are
        written.
        """
        d = len(self.feature_names)
        vals = [v for _, _, v in rows]
        if vals and all(type(v) is list and len(v) == d for v in vals):
            try:
                arr = np.array(vals, dtype=np.float64)  # (n, d)
            except (TypeError, ValueError, OverflowError):  # not numbers: the row checks say so
                pass
            else:
                fast = self.columns([r[0] for r in rows], [r[1] for r in rows], arr)
                if fast is not None:
                    return fast
        records = [
            Record(
                self._series_id(None, sid), parse_ts(t), _values(v, self.feature_names, self._index)
            )
            for sid, t, v in rows
        ]
        return RecordBatch.from_records(records, d)

    def columns(
        self, series_ids: Sequence[Any], ts: Sequence[Any], values: npt.NDArray[np.float64]
    ) -> RecordBatch | None:
        """The batch of n records given as columns (``values`` (n, d), numbers already), when
        every record passes the checks at once; None when one does not (the caller then checks
        them one by one, which names the reason)."""
        n = len(series_ids)
        if values.shape != (n, len(self.feature_names)) or len(ts) != n:
            return None
        if not all(type(t) is float or type(t) is int for t in ts):
            return None
        # ≤ 64 characters are ≤ 256 bytes in UTF-8
        if not all(type(s) is str and 0 < len(s) <= 64 for s in series_ids):
            return None
        try:
            ts_arr = np.array(ts, dtype=np.float64)
        except OverflowError:  # an int past float64's range
            return None
        fine = (
            np.isfinite(ts_arr).all()
            and np.isfinite(values).all()
            and np.abs(values).max(initial=0.0) <= _F32_MAX
        )
        if not fine:
            return None
        return RecordBatch(tuple(series_ids), ts_arr, values.astype(np.float32, order="C"))


def outcome(
    decode: Callable[[bytes | None, bytes | None], Record], key: bytes | None, value: bytes | None
) -> Record | RecordError:
    """What ``decode`` makes of one message: its record, or the error it raises."""
    try:
        return decode(key, value)
    except RecordError as exc:
        return exc


def decode(
    key: bytes | None,
    value: bytes | None,
    feature_names: Sequence[str],
    *,
    max_bytes: int = 1 << 20,
) -> Record:
    """Decode one message into a :class:`Record` or raise :class:`RecordError` (for many
    messages, build one :class:`RecordDecoder`)."""
    return RecordDecoder(feature_names, max_bytes=max_bytes)(key, value)


def encode(record: Record, feature_names: Sequence[str] | None = None) -> bytes:
    """Serialise a record as a contract message value (values as an object if names are given)."""
    values: Any = record.values.tolist()
    if feature_names is not None:
        values = dict(zip(feature_names, values, strict=True))
    return _json.dumps({"series_id": record.series_id, "ts": record.ts, "values": values})
