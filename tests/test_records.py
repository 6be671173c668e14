from __future__ import annotations

import numpy as np
import pytest

from stream_vae.core.records import (
    REASONS,
    Record,
    RecordBatch,
    RecordDecoder,
    decode,
    encode,
    parse_ts,
)
from stream_vae.errors import RecordError

FEATURES = ("temp", "pressure", "rpm")


def test_list_values_and_key_fallback() -> None:
    r = decode(b"pump-1", b'{"ts": 1700000000.5, "values": [1, 2.5, -3]}', FEATURES)
    assert r.series_id == "pump-1"
    assert r.ts == 1700000000.5
    assert r.values.dtype == np.float32
    assert r.values.tolist() == [1.0, 2.5, -3.0]


def test_object_values_reordered_to_model_order() -> None:
    r = decode(
        None,
        b'{"series_id": "a", "ts": 5, "values": {"rpm": 3, "temp": 1, "pressure": 2}}',
        FEATURES,
    )
    assert r.values.tolist() == [1.0, 2.0, 3.0]


def test_body_series_id_wins_over_key() -> None:
    assert (
        decode(b"k", b'{"series_id": "b", "ts": 1, "values": [1, 2, 3]}', FEATURES).series_id == "b"
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2023-11-14T22:13:20Z", 1700000000.0),
        ("2023-11-14T22:13:20+00:00", 1700000000.0),
        ("2023-11-14 22:13:20", 1700000000.0),  # naive = UTC
        ("2023-11-14T23:13:20+01:00", 1700000000.0),
        ("1700000000", 1700000000.0),
        (1700000000, 1700000000.0),
    ],
)
def test_timestamps(raw: object, expected: float) -> None:
    assert parse_ts(raw) == expected


REJECTIONS = [
    (b"k", b"{not json", "bad_json"),
    (b"k", b"[1, 2, 3]", "bad_json"),
    (b"k", None, "bad_json"),
    (None, b'{"ts": 1, "values": [1, 2, 3]}', "missing_field"),
    (b"k", b'{"values": [1, 2, 3]}', "missing_field"),
    (b"k", b'{"ts": 1}', "missing_field"),
    (b"k", b'{"ts": 1, "values": [1, 2]}', "wrong_arity"),
    (b"k", b'{"ts": 1, "values": {"temp": 1, "pressure": 2}}', "wrong_arity"),
    (b"k", b'{"ts": 1, "values": {"temp": 1, "pressure": 2, "volts": 3}}', "unknown_feature"),
    (b"k", b'{"ts": 1, "values": [1, NaN, 3]}', "nan_value"),  # Python's json.dumps writes it
    (b"k", b'{"ts": 1, "values": [1, -Infinity, 3]}', "nan_value"),
    (b"k", b'{"ts": 1, "values": [1, "NaN", 3]}', "nan_value"),
    (b"k", b'{"ts": 1, "values": {"temp": 1, "pressure": "inf", "rpm": 2}}', "nan_value"),
    (b"k", b'{"ts": 1, "values": [1, "NaNo", 3], "note": "NaN"}', "bad_value"),
    (b"k", b'{"ts": 1, "values": [1, 1e400, 3]}', "bad_json"),
    (b"k", b'{"ts": 1, "values": [1, 1e300, 3]}', "bad_value"),  # finite but not float32
    (b"k", b'{"ts": 1, "values": [1, "2", 3]}', "bad_value"),
    (b"k", b'{"ts": 1, "values": [1, true, 3]}', "bad_value"),
    (b"k", b'{"ts": 1, "values": 7}', "bad_value"),
    (b"k", b'{"ts": "yesterday", "values": [1, 2, 3]}', "bad_timestamp"),
    (b"k", b'{"ts": true, "values": [1, 2, 3]}', "bad_timestamp"),
    (b"k", b'{"ts": null, "values": [1, 2, 3]}', "bad_timestamp"),
    (b"k", b'{"series_id": 5, "ts": 1, "values": [1, 2, 3]}', "bad_series_id"),
    (b"k", b'{"series_id": "", "ts": 1, "values": [1, 2, 3]}', "bad_series_id"),
    (b"\xff\xfe", b'{"ts": 1, "values": [1, 2, 3]}', "bad_series_id"),
]


@pytest.mark.parametrize(("key", "value", "reason"), REJECTIONS)
def test_rejections_carry_a_reason(key: bytes | None, value: bytes | None, reason: str) -> None:
    with pytest.raises(RecordError) as info:
        decode(key, value, FEATURES)
    assert info.value.reason == reason
    assert info.value.reason in REASONS


def test_oversized() -> None:
    with pytest.raises(RecordError) as info:
        decode(b"k", b'{"ts": 1, "values": [1, 2, 3]}' + b" " * 100, FEATURES, max_bytes=64)
    assert info.value.reason == "oversized"


def test_encode_round_trip_both_forms() -> None:
    rec = Record("s", 12.5, np.array([1.5, -2.0, 3.25], np.float32))
    for names in (None, FEATURES):
        back = decode(None, encode(rec, names), FEATURES)
        assert back.series_id == "s" and back.ts == 12.5
        assert back.values.tolist() == [1.5, -2.0, 3.25]


def test_batch_from_records_and_slice() -> None:
    recs = [Record(f"s{i % 2}", float(i), np.full(3, i, np.float32)) for i in range(5)]
    b = RecordBatch.from_records(recs, 3)
    assert b.series_ids == ("s0", "s1", "s0", "s1", "s0")
    assert b.values[:, 0].tolist() == [0, 1, 2, 3, 4]
    s = b.slice(1, 3)
    assert s.series_ids == ("s1", "s0") and s.ts.tolist() == [1.0, 2.0]
    assert [r.ts for r in b.records()] == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_in_series_time_order_sorts_each_series_in_its_own_places() -> None:
    ts = np.array([3.0, 10.0, 1.0, 12.0, 2.0, 11.0, 2.0])
    sids = ("a", "b", "a", "b", "a", "b", "a")
    values = np.arange(7, dtype=np.float32)[:, None]
    b, moved = RecordBatch(sids, ts, values).in_series_time_order()
    assert b.series_ids == sids  # the series keep their places: only time order within changes
    assert b.ts.tolist() == [1.0, 10.0, 2.0, 11.0, 2.0, 12.0, 3.0]
    assert b.values[:, 0].tolist() == [2, 1, 4, 5, 6, 3, 0]  # ties (2.0) keep file order
    assert moved == 6
    same = RecordBatch(b.series_ids, b.ts, b.values)
    again, moved = same.in_series_time_order()
    assert again is same and moved == 0  # in order: the batch itself


def test_a_timestamp_past_float64_is_a_bad_timestamp_not_an_overflow() -> None:
    with pytest.raises(RecordError) as info:
        parse_ts(10**400)
    assert info.value.reason == "bad_timestamp"


def test_a_batch_of_typed_rows_is_checked_at_once_with_the_reasons_of_one_record() -> None:
    dec = RecordDecoder(("a", "b"))
    rows = [("s-1", 1.0, [0.5, 1.5]), ("s-2", 2.0, [2.5, -3.5])]
    batch = dec.batch(rows)
    assert batch.series_ids == ("s-1", "s-2") and batch.values.dtype == np.float32
    np.testing.assert_array_equal(batch.ts, [1.0, 2.0])
    np.testing.assert_array_equal(batch.values, [[0.5, 1.5], [2.5, -3.5]])
    # the other shapes a record may have take the per-record checks, with the same result
    mixed = [("s-1", "1970-01-01T00:00:01Z", {"b": 1.5, "a": 0.5}), ("é" * 100, 2, [2.5, -3.5])]
    slow = dec.batch(mixed)
    assert slow.series_ids == ("s-1", "é" * 100)
    np.testing.assert_array_equal(slow.ts, [1.0, 2.0])
    np.testing.assert_array_equal(slow.values, batch.values)
    bad = {
        "nan_value": ("s", 1.0, [float("nan"), 0.0]),
        "bad_value": ("s", 1.0, [1e39, 0.0]),
        "bad_series_id": ("😀" * 65, 1.0, [0.0, 0.0]),  # 65 characters, 260 bytes
        "bad_timestamp": ("s", float("inf"), [0.0, 0.0]),
        "wrong_arity": ("s", 1.0, [0.0]),
    }
    for reason, row in bad.items():
        with pytest.raises(RecordError) as info:
            dec.batch([rows[0], row])
        assert info.value.reason == reason, row
        with pytest.raises(RecordError) as one:  # the same reason as the row alone says
            dec.record(None, {"series_id": row[0], "ts": row[1], "values": row[2]})
        assert one.value.reason == reason


def test_a_json_batch_is_checked_at_once_and_says_what_one_message_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """RecordDecoder.many parses each message and checks the batch as one array; a batch with
    any message the array cannot take (every rejection above, and the other shapes a good
    message may have) gives, message by message, what decoding it alone gives."""
    dec = RecordDecoder(FEATURES)
    good = [
        (b"k1", b'{"series_id": "m-1", "ts": 1.5, "values": [1, 2.5, -3]}'),
        (None, b'{"series_id": "m-2", "ts": 2, "values": [0.0, 1e30, 7]}'),
        (b"k", b'{"series_id": "m-3", "ts": 3, "values": {"rpm": 3, "temp": 1, "pressure": 2}}'),
    ]
    other_shapes = [
        (b"k3", b'{"ts": 3, "values": [1, 2, 3]}'),  # the id from the key
        (b"k", b'{"series_id": "m", "ts": "1970-01-01T00:00:04Z", "values": [1, 2, 3]}'),
        (b"k", b'{"series_id": "m", "ts": 5, "values": {"rpm": 3, "temp": 1, "volts": 2}}'),
        (b"k", b'{"series_id": "untrue", "ts": 6, "values": [1, 2, 3]}'),  # "true" in a name
        (b"k", b'{"series_id": "m", "ts": 7, "values": [1, 2, 12345678901234567890123]}'),
    ]

    def alone(msgs: list[tuple[bytes | None, bytes | None]]) -> list[object]:
        out: list[object] = []
        for k, v in msgs:
            try:
                r = dec(k, v)
                out.append((r.series_id, r.ts, r.values.tolist()))
            except RecordError as exc:
                out.append(exc.reason)
        return out

    def together(msgs: list[tuple[bytes | None, bytes | None]]) -> list[object]:
        got = dec.many([k for k, _ in msgs], [v for _, v in msgs])
        return [
            g.reason if isinstance(g, RecordError) else (g.series_id, g.ts, g.values.tolist())
            for g in got
        ]

    for extra in [*[(k, v) for k, v, _ in REJECTIONS], *other_shapes]:
        msgs = [*good, extra, good[0]]
        assert together(msgs) == alone(msgs), extra
    # a batch of plain messages (values all lists, or all objects) never reaches the
    # per-record checks
    monkeypatch.setattr(RecordDecoder, "record", lambda *a: pytest.fail("per-record path"))
    assert (
        together(good[:2] * 20)
        == [
            ("m-1", 1.5, [1.0, 2.5, -3.0]),
            ("m-2", 2.0, [0.0, float(np.float32(1e30)), 7.0]),
        ]
        * 20
    )
    assert together(good[2:] * 20) == [("m-3", 3.0, [1.0, 2.0, 3.0])] * 20
    one = RecordDecoder(("x",))
    got = one.many([None] * 2, [b'{"series_id": "a", "ts": 1, "values": {"x": 4}}'] * 2)
    assert [(r.series_id, r.values.tolist()) for r in got] == [("a", [4.0])] * 2  # type: ignore[union-attr]
