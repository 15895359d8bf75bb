"""Hand-rolled Avro binary encoding of the row-token envelope (the hot path).

Byte-for-byte the encoding fastavro produces for ``schemas/row_token.avsc`` (a unit
test checks both directions against fastavro), at a fraction of the per-row cost:
the envelope is fixed, so field order and types are known and no schema walk is
needed. Any other schema goes through fastavro.
"""

from __future__ import annotations

from typing import Any


def _varint(n: int) -> bytes:
    """Zigzag varint of a signed 64-bit int."""
    z = ((n << 1) ^ (n >> 63)) & 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


_SMALL = [_varint(n) for n in range(16384)]  # lengths below 16 KiB: a table lookup
_TS_CACHE: dict[int, bytes] = {}  # rows of a batch share event-time milliseconds


def _len(n: int) -> bytes:
    return _SMALL[n] if n < 16384 else _varint(n)


def _ts(v: int) -> bytes:
    out = _TS_CACHE.get(v)
    if out is None:
        if len(_TS_CACHE) > 65536:
            _TS_CACHE.clear()
        out = _TS_CACHE[v] = _varint(v)
    return out


_NULL = b"\x00"
_SOME = b"\x02"
_EMPTY_ARRAY = b"\x00"


def encode_envelope(t: dict[str, Any], payload: bytes) -> bytes:
    small = _SMALL
    tid = t["token_id"].encode()
    sid = t["source_id"].encode()
    pos = t["source_position"].encode()
    key = t["key"]
    ts = t["event_time_ms"]
    lineage = t["lineage"]
    n_tid, n_pay, n_sid, n_pos = len(tid), len(payload), len(sid), len(pos)
    if n_tid < 16384 and n_pay < 16384 and n_sid < 16384 and n_pos < 16384:
        parts = [small[n_tid], tid]
        if key is None:
            parts.append(_NULL)
        else:
            kb = key.encode()
            parts += (_SOME, _len(len(kb)), kb)
        parts += (small[n_pay], payload, small[n_sid], sid, small[n_pos], pos)
    else:
        parts = [_len(n_tid), tid]
        if key is None:
            parts.append(_NULL)
        else:
            kb = key.encode()
            parts += (_SOME, _len(len(kb)), kb)
        parts += (_len(n_pay), payload, _len(n_sid), sid, _len(n_pos), pos)
    if ts is None:
        parts.append(_NULL)
    else:
        parts += (_SOME, _ts(ts))
    if lineage:
        parts.append(_len(len(lineage)))
        for step in lineage:
            sb = step.encode()
            parts += (_len(len(sb)), sb)
    parts.append(_EMPTY_ARRAY)
    return b"".join(parts)


class EnvelopeError(ValueError):
    pass


def _varint_at(buf: bytes, i: int) -> tuple[int, int]:
    """Signed zigzag varint at ``i``; returns (value, next index)."""
    shift = 0
    z = 0
    while True:
        b = buf[i]  # IndexError on truncation: reported by the caller
        i += 1
        z |= (b & 0x7F) << shift
        if b < 0x80:
            return (z >> 1) ^ -(z & 1), i
        shift += 7
        if shift > 63:
            raise EnvelopeError("varint too long")


def _long_at(buf: bytes, i: int) -> tuple[int, int]:
    """``_varint_at`` with the one- and two-byte values (lengths below 8 KiB) inline."""
    b = buf[i]
    if b < 0x80:
        return (b >> 1) ^ -(b & 1), i + 1
    c = buf[i + 1]
    if c < 0x80:
        z = (b & 0x7F) | (c << 7)
        return (z >> 1) ^ -(z & 1), i + 2
    return _varint_at(buf, i)


def _str_at(buf: bytes, i: int, n: int) -> tuple[bytes, int]:
    """The Avro string or bytes at ``i`` of ``buf`` (``n == len(buf)``); (value, next index)."""
    b = buf[i]
    if b < 0x80:  # a length below 64: one byte (the common case)
        if b & 1:
            raise EnvelopeError("negative string length")
        i += 1
        end = i + (b >> 1)
    else:
        ln, i = _long_at(buf, i)
        if ln < 0:
            raise EnvelopeError("negative string length")
        end = i + ln
    if end > n:
        raise EnvelopeError("truncated string")
    return buf[i:end], end


def decode_envelope(buf: bytes) -> tuple[str, str | None, bytes, str, str, int | None, list[str]]:
    """(token_id, key, payload bytes, source_id, source_position, event_time_ms, lineage).

    Raises ``EnvelopeError``, ``IndexError`` or ``UnicodeDecodeError`` on bad input."""
    n = len(buf)
    tid, i = _str_at(buf, 0, n)
    b = buf[i]
    if b == 0:
        key = None
        i += 1
    elif b == 2:
        kb, i = _str_at(buf, i + 1, n)
        key = kb.decode()
    else:
        raise EnvelopeError(f"bad union branch byte {b} for key")
    payload, i = _str_at(buf, i, n)
    sid, i = _str_at(buf, i, n)
    pos, i = _str_at(buf, i, n)
    b = buf[i]
    if b == 0:
        ts = None
        i += 1
    elif b == 2:
        ts, i = _varint_at(buf, i + 1)
    else:
        raise EnvelopeError(f"bad union branch byte {b} for event_time_ms")
    lineage: list[str] = []
    if buf[i] == 0:  # an empty lineage (a source's own tokens): the array's terminator only
        i += 1
    else:
        while True:
            count, i = _long_at(buf, i)
            if count == 0:
                break
            if count < 0:  # a block with a byte-size prefix
                count = -count
                _size, i = _long_at(buf, i)
            for _ in range(count):
                step, i = _str_at(buf, i, n)
                lineage.append(step.decode())
    if i != n:
        raise EnvelopeError(f"{n - i} trailing bytes")
    return tid.decode(), key, payload, sid.decode(), pos.decode(), ts, lineage


def string_part(s: str) -> bytes:
    """The encoding of one Avro ``string`` (length, bytes): constant envelope fields
    (a batch's source id) are encoded once and joined as they are."""
    b = s.encode()
    return _len(len(b)) + b


def lineage_part(lineage: list[str]) -> bytes:
    """The encoding of the ``lineage`` array, terminator included."""
    if not lineage:
        return _EMPTY_ARRAY
    return b"".join([_len(len(lineage)), *(string_part(s) for s in lineage), _EMPTY_ARRAY])


def encode_parts(
    tid: bytes, key: bytes | None, payload: bytes, sid: bytes, pos: bytes, ts: int | None, lineage: bytes
) -> bytes:
    """``encode_envelope`` with the source id and lineage already encoded (``string_part``,
    ``lineage_part``): the same bytes, without a token dict or per-row work on constants."""
    return b"".join(
        (
            _len(len(tid)),
            tid,
            _NULL if key is None else _SOME + _len(len(key)) + key,
            _len(len(payload)),
            payload,
            sid,
            _len(len(pos)),
            pos,
            _NULL if ts is None else _SOME + _ts(ts),
            lineage,
        )
    )
