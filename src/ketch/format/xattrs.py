"""The xattr block of an inode (docs/format.md §2.8).

u16 count, then per attribute sorted by name: u16 name_size, u32 value_size, name, value
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

from ketch.errors import integrity

_COUNT = struct.Struct("<H")  # count: number of attributes
_ENTRY = struct.Struct(
    "<"
    "H"  # name_size
    "I"  # value_size
)


def encode_xattrs(xattrs: Mapping[bytes, bytes]) -> bytes:
    """The canonical block: empty for no xattrs, else sorted by name bytes."""
    if not xattrs:
        return b""
    parts = [_COUNT.pack(len(xattrs))]
    for name in sorted(xattrs):
        value = xattrs[name]
        parts.append(_ENTRY.pack(len(name), len(value)))
        parts.append(name)
        parts.append(value)
    return b"".join(parts)


def decode_xattrs(block: bytes | memoryview) -> dict[bytes, bytes]:
    if not block:
        return {}
    if len(block) < _COUNT.size:
        raise integrity("xattr block size", f">= {_COUNT.size}", len(block))
    (count,) = _COUNT.unpack_from(block, 0)
    pos = _COUNT.size
    out: dict[bytes, bytes] = {}
    for _ in range(count):
        if pos + _ENTRY.size > len(block):
            raise integrity("xattr block entry", f"within {len(block)} bytes", pos + _ENTRY.size)
        name_size, value_size = _ENTRY.unpack_from(block, pos)
        pos += _ENTRY.size
        end = pos + name_size + value_size
        if end > len(block):
            raise integrity("xattr block entry end", f"within {len(block)} bytes", end)
        out[bytes(block[pos : pos + name_size])] = bytes(block[pos + name_size : end])
        pos = end
    if pos != len(block):
        raise integrity("xattr block size", pos, len(block))
    return out
