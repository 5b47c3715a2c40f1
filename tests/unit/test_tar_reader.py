"""The tar reader (``ketch.oci.tar_header``, ``ketch.oci.tar_layer``) against ``tarfile``.

Archives written by Python's tarfile (ustar, gnu, pax) and by GNU tar (gnu, posix with
xattrs) parse to the same fields as ``tarfile`` reads from the same bytes (tarfile is the
oracle here, nowhere else). Broken archives (bad checksums, truncation at every offset,
random bytes, random mutations) give a ``KetchError`` and never anything else.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import shutil
import stat
import subprocess
import tarfile
from decimal import Decimal
from pathlib import Path
from typing import IO, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ketch.errors import BadLayerError, KetchError, UnsupportedError
from ketch.oci import tar_header as th
from ketch.oci.tar_header import (
    TarHeader,
    TarHeaderReader,
    block_sum,
    checksum_matches,
    parse_number,
    parse_pax_records,
    parse_pax_time,
)
from ketch.oci.tar_layer import EntryKind, LayerEntry, LayerReader
from ketch.oci.tar_sparse import Piece, ZeroRun, zero_filled

LAYER = "sha256:" + "ab" * 32
ENC, ERRORS = "utf-8", "surrogateescape"
MTIME = 1_700_000_000

# -- reading ---------------------------------------------------------------------------


def parse(
    data: bytes | IO[bytes], *, read_data: bool = True, block: int = 1 << 16
) -> list[tuple[TarHeader, bytes]]:
    """Every entry's header, and its data unless ``read_data`` is false (then skipped)."""
    stream = io.BytesIO(data) if isinstance(data, bytes) else data
    reader = TarHeaderReader(stream, LAYER)
    out: list[tuple[TarHeader, bytes]] = []
    while (header := reader.next()) is not None:
        body = b"".join(zero_filled(reader.read_data(block), block)) if read_data else b""
        out.append((header, body))
    return out


def layer_entries(data: bytes, *, read_data: bool = True) -> list[tuple[LayerEntry, bytes]]:
    reader = LayerReader(io.BytesIO(data), LAYER)
    out: list[tuple[LayerEntry, bytes]] = []
    for entry in reader.entries():
        body = b""
        if read_data and entry.kind is EntryKind.FILE:
            body = b"".join(zero_filled(reader.read_data(4096), 4096))
        out.append((entry, body))
    return out


def enc(text: str) -> bytes:
    return text.encode(ENC, ERRORS)


def _pax_time(text: str) -> tuple[int, int]:
    """The oracle for pax times: exact decimal arithmetic, floor to the nanosecond."""
    value = Decimal(text.strip())
    sec = int(value.to_integral_value(rounding="ROUND_FLOOR"))
    nsec = int(((value - sec) * 1_000_000_000).to_integral_value(rounding="ROUND_FLOOR"))
    return sec, nsec


def assert_same_as_tarfile(data: bytes) -> list[tuple[TarHeader, bytes]]:
    """Our headers and data equal what tarfile reads from ``data``, field by field."""
    ours = parse(data)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:", encoding=ENC, errors=ERRORS) as tar:
        members = tar.getmembers()
        assert len(ours) == len(members), [m.name for m in members]
        for (header, body), info in zip(ours, members, strict=True):
            where = info.name
            assert header.typeflag == info.type, where
            if info.isdir():
                assert header.name.rstrip(b"/") == enc(info.name).rstrip(b"/"), where
            else:
                assert header.name == enc(info.name), where
            assert header.linkname == enc(info.linkname), where
            assert (header.mode, header.uid, header.gid) == (info.mode, info.uid, info.gid), where
            assert header.size == (info.size if info.isreg() else 0), where
            if "mtime" in info.pax_headers:
                assert (header.mtime_sec, header.mtime_nsec) == _pax_time(
                    info.pax_headers["mtime"]
                ), where
            else:
                assert (header.mtime_sec, header.mtime_nsec) == (info.mtime, 0), where
            if info.ischr() or info.isblk():
                assert (header.devmajor, header.devminor) == (info.devmajor, info.devminor)
            xattrs: dict[bytes, bytes] = {}
            for key, value in info.pax_headers.items():
                if key.startswith("SCHILY.xattr."):
                    xattrs[enc(key[13:])] = enc(value)
                elif key.startswith("LIBARCHIVE.xattr."):
                    xattrs[enc(key[17:])] = base64.b64decode(value + "=" * (-len(value) % 4))
            assert header.xattrs == xattrs, where
            if info.isreg():
                extracted = tar.extractfile(info)
                assert extracted is not None
                assert body == extracted.read(), where
    return ours


# -- writing ---------------------------------------------------------------------------

FORMATS = {"ustar": tarfile.USTAR_FORMAT, "gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT}
Member = tuple[tarfile.TarInfo, bytes | None]


def info(
    name: str,
    kind: bytes = tarfile.REGTYPE,
    *,
    data: bytes | None = None,
    linkname: str = "",
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    mtime: float = MTIME,
    dev: tuple[int, int] = (0, 0),
    pax: dict[str, str] | None = None,
) -> Member:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.linkname = linkname
    ti.mode, ti.uid, ti.gid, ti.mtime = mode, uid, gid, mtime
    ti.devmajor, ti.devminor = dev
    ti.uname = ti.gname = ""
    if pax:
        ti.pax_headers = dict(pax)
    if data is not None:
        ti.size = len(data)
    return ti, data


def write_tar(
    members: list[Member], fmt: str, *, pax_headers: dict[str, str] | None = None
) -> bytes:
    out = io.BytesIO()
    with tarfile.open(
        fileobj=out,
        mode="w",
        format=FORMATS[fmt],
        encoding=ENC,
        errors=ERRORS,
        pax_headers=pax_headers,
    ) as tar:
        for ti, data in members:
            tar.addfile(ti, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n += 1
    return str(n).encode() + body


def raw_header(
    name: bytes,
    typeflag: bytes,
    size: int = 0,
    *,
    linkname: bytes = b"",
    mode: int = 0o644,
    fields: dict[str, bytes] | None = None,
) -> bytes:
    """A ustar header block written here field by field (for what tarfile won't write)."""
    values = {
        "name": name,
        "mode": b"%07o\0" % mode,
        "uid": b"0000000\0",
        "gid": b"0000000\0",
        "size": b"%011o\0" % size,
        "mtime": b"%011o\0" % MTIME,
        "chksum": b" " * 8,
        "typeflag": typeflag,
        "linkname": linkname,
        "magic": b"ustar\0",
        "version": b"00",
        "uname": b"",
        "gname": b"",
        "devmajor": b"0000000\0",
        "devminor": b"0000000\0",
        "prefix": b"",
    }
    values.update(fields or {})
    sizes = [100, 8, 8, 8, 12, 12, 8, 1, 100, 6, 2, 32, 32, 8, 8, 155]
    block = bytearray(
        b"".join(v.ljust(n, b"\0") for v, n in zip(values.values(), sizes, strict=True))
    )
    block += bytes(512 - len(block))
    return fix_checksum(bytes(block))


def fix_checksum(block: bytes) -> bytes:
    out = bytearray(block)
    out[148:156] = b" " * 8
    out[148:156] = b"%06o\0 " % sum(out)
    return bytes(out)


def with_data(header: bytes, data: bytes) -> bytes:
    return header + data + bytes(-len(data) % 512)


END = bytes(1024)


def base256(value: int, width: int) -> bytes:
    """GNU base-256: the marker bit, then two's complement big-endian."""
    raw = (value % (1 << (8 * width))).to_bytes(width, "big")
    return bytes([raw[0] | 0x80]) + raw[1:]


# -- archives written by Python's tarfile -------------------------------------------------


def python_members(fmt: str) -> list[Member]:
    long_dir = "d" * 60 + "/" + "e" * 60  # 121 bytes: ustar splits it into prefix + name
    members = [
        info("dir", tarfile.DIRTYPE, mode=0o755),
        info("dir/file", data=b"hello\n" * 100, mode=0o4755, uid=1000, gid=100),
        info("dir/empty", data=b""),
        info("dir/block-sized", data=bytes(range(256)) * 4),
        info("dir/link", tarfile.SYMTYPE, linkname="file", mode=0o777),
        info("dir/hard", tarfile.LNKTYPE, linkname="dir/file"),
        info("dev/null", tarfile.CHRTYPE, mode=0o666, dev=(1, 3)),
        info("dev/sda1", tarfile.BLKTYPE, mode=0o660, dev=(8, 1)),
        info("run/fifo", tarfile.FIFOTYPE),
        info(long_dir, tarfile.DIRTYPE),
        info(long_dir + "/f", data=b"prefix\n"),
        info("caf\udce9/\udcff\udcfe", data=b"latin-1 bytes\n"),  # not UTF-8
        info("caf\xe9-utf8", data=b"utf-8\n"),
        info("old", data=b"x", mtime=0),
    ]
    if fmt != "ustar":
        long_name = "/".join(["n" * 50] * 6)  # 305 bytes
        members += [
            info("l" * 150, data=b"over 100\n"),
            info(long_name, data=b"over 255\n"),
            info("long-link", tarfile.SYMTYPE, linkname="t" * 120 + "/" + "u" * 200),
            info("long-hard", tarfile.LNKTYPE, linkname=long_name),
            info("big-ids", data=b"ids\n", uid=3_000_000, gid=2_097_152),
            info("max-octal", data=b"", uid=0o7777777, gid=0o7777776),
        ]
    if fmt == "gnu":
        members += [
            info("dev/big", tarfile.BLKTYPE, dev=(0o7777777 + 5, 1 << 30)),
            info("before-1970", data=b"", mtime=-86400),
        ]
    if fmt == "pax":
        members += [
            info("ns", data=b"ns\n", pax={"mtime": "1700000000.123456789"}),
            info("ns-short", data=b"", pax={"mtime": "1700000000.5"}),
            info("ns-long", data=b"", pax={"mtime": "1700000000.1234567891234"}),
            info("neg", data=b"", pax={"mtime": "-1.25"}),
            info(
                "xattrs",
                data=b"x\n",
                pax={
                    "SCHILY.xattr.user.text": "plain",
                    "SCHILY.xattr.user.bin": "\udcff\x00\x01\udc80end",
                    "SCHILY.xattr.security.capability": "\x01\x00\x00\x02\x00\x20\x00\x00",
                    "SCHILY.xattr.user.empty": "",
                    "LIBARCHIVE.xattr.user.b64": base64.b64encode(b"\xff\x00raw").decode(),
                    "comment": "ignored",
                },
            ),
            info("pax-ids", data=b"", pax={"uid": "4000000000", "gid": "7"}),
        ]
    return members


@pytest.mark.parametrize("fmt", ["ustar", "gnu", "pax"])
def test_python_tarfile_archives_parse_as_tarfile_reads_them(fmt: str) -> None:
    data = write_tar(python_members(fmt), fmt)
    ours = assert_same_as_tarfile(data)
    by_name = {h.name: h for h, _ in ours}
    long_dir = b"d" * 60 + b"/" + b"e" * 60
    assert by_name[long_dir + b"/f"].typeflag == th.REGULAR
    if fmt == "ustar":
        # The prefix field really was used.
        assert long_dir not in data and b"e" * 60 + b"/f\0" in data
    assert by_name[b"caf\xe9/\xff\xfe"].size == len(b"latin-1 bytes\n")
    if fmt != "ustar":
        assert by_name[b"big-ids"].uid == 3_000_000
        assert by_name[b"long-link"].linkname == b"t" * 120 + b"/" + b"u" * 200
    if fmt == "gnu":
        assert (by_name[b"dev/big"].devmajor, by_name[b"dev/big"].devminor) == (
            0o7777777 + 5,
            1 << 30,
        )
        assert by_name[b"before-1970"].mtime_sec == -86400
    if fmt == "pax":
        assert (by_name[b"ns"].mtime_sec, by_name[b"ns"].mtime_nsec) == (MTIME, 123456789)
        assert (by_name[b"ns-long"].mtime_sec, by_name[b"ns-long"].mtime_nsec) == (
            MTIME,
            123456789,
        )
        assert (by_name[b"neg"].mtime_sec, by_name[b"neg"].mtime_nsec) == (-2, 750_000_000)
        assert by_name[b"xattrs"].xattrs == {
            b"user.text": b"plain",
            b"user.bin": b"\xff\x00\x01\x80end",
            b"security.capability": b"\x01\x00\x00\x02\x00\x20\x00\x00",
            b"user.empty": b"",
            b"user.b64": b"\xff\x00raw",
        }
        assert by_name[b"pax-ids"].uid == 4_000_000_000


def test_pax_global_header_applies_to_every_following_entry() -> None:
    members = [info("a", data=b"a"), info("b", data=b"b", pax={"SCHILY.xattr.user.own": "b"})]
    data = write_tar(members, "pax", pax_headers={"SCHILY.xattr.user.g": "global"})
    ours = assert_same_as_tarfile(data)
    assert [h.xattrs for h, _ in ours] == [
        {b"user.g": b"global"},
        {b"user.g": b"global", b"user.own": b"b"},
    ]


def test_pax_global_header_in_the_middle_applies_from_there_on() -> None:
    first = write_tar([info("a", data=b"a")], "ustar")[:1024]  # header + data, no end
    glob = tarfile.TarInfo.create_pax_global_header(
        {"SCHILY.xattr.user.g": "1", "mtime": "5.5", "uid": "42"}
    )
    rest = write_tar([info("b", data=b"b"), info("c", tarfile.DIRTYPE)], "ustar")
    data = first + glob + rest
    ours = assert_same_as_tarfile(data)
    assert [(h.name, h.uid, h.mtime_sec, h.mtime_nsec, h.xattrs) for h, _ in ours] == [
        (b"a", 0, MTIME, 0, {}),
        (b"b", 42, 5, 500_000_000, {b"user.g": b"1"}),
        (b"c/", 42, 5, 500_000_000, {b"user.g": b"1"}),
    ]


def test_local_pax_records_override_global_ones_and_an_empty_value_keeps_the_field() -> None:
    globals_ = pax_record(b"uid", b"7") + pax_record(b"SCHILY.xattr.user.a", b"global")
    glob = with_data(raw_header(b"g", th.PAX_GLOBAL, len(globals_)), globals_)
    records = (
        pax_record(b"uid", b"")
        + pax_record(b"path", b"")
        + pax_record(b"SCHILY.xattr.user.a", b"local")
    )
    local = with_data(raw_header(b"x", th.PAX_LOCAL, len(records)), records)
    entry = raw_header(b"name", th.REGULAR, fields={"uid": b"0000011\0"})
    [(first, _), (second, _)] = parse(glob + local + entry + entry + END)
    assert (first.name, first.uid, first.xattrs) == (b"name", 9, {b"user.a": b"local"})
    assert (second.name, second.uid, second.xattrs) == (b"name", 7, {b"user.a": b"global"})


def test_gnu_long_name_wins_over_pax_path() -> None:
    records = pax_record(b"path", b"from-pax")
    data = (
        with_data(raw_header(b"x", th.PAX_LOCAL, len(records)), records)
        + with_data(raw_header(b"L", th.GNU_LONGNAME, 9), b"from-gnu\0")
        + raw_header(b"short", th.REGULAR)
        + END
    )
    assert [h.name for h, _ in parse(data)] == [b"from-gnu"]


def test_old_regular_type_with_a_trailing_slash_is_a_directory() -> None:
    data = raw_header(b"v7dir/", th.REGULAR_OLD, fields={"magic": b"", "version": b""}) + END
    [(header, _)] = parse(data)
    assert header.typeflag == th.DIRECTORY
    [(entry, _)] = layer_entries(data)
    assert (entry.kind, entry.path) == (EntryKind.DIR, (b"v7dir",))


def test_star_prefix_is_131_bytes() -> None:
    block = bytearray(raw_header(b"name", th.REGULAR, fields={"prefix": b"pre"}))
    block[476:488] = b"%011o\0" % 12345  # star's atime, right after its shorter prefix
    block[508:512] = b"tar\0"
    data = fix_checksum(bytes(block)) + END
    assert [h.name for h, _ in parse(data)] == [b"pre/name"]


def test_gnu_magic_does_not_join_the_prefix() -> None:
    data = raw_header(
        b"name", th.REGULAR, fields={"magic": b"ustar ", "version": b" \0", "prefix": b"junk"}
    )
    assert [h.name for h, _ in parse(data + END)] == [b"name"]


# -- numbers and checksums ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        (b"0000644\0", 0o644),
        (b"0000644 ", 0o644),
        (b"   644  ", 0o644),
        (b"\x00\x00\x00644\x00", 0o644),  # leading NULs (Go trims them too)
        (b"644\0junk", 0o644),  # ends at a NUL
        (b"\0" * 8, 0),
        (b" " * 12, 0),
        (b"77777777777\0", 0o77777777777),
        (base256(1, 8), 1),
        (base256(3_000_000, 8), 3_000_000),
        (base256((1 << 33) + 5, 12), (1 << 33) + 5),
        (base256(-1, 12), -1),
        (base256(-86400, 12), -86400),
        (b"\x80" + bytes(10) + b"\x07", 7),
    ],
)
def test_numbers(field: bytes, value: int) -> None:
    assert parse_number(field) == value
    if len(field) == 8 and (field[0] in (0x80, 0xFF, 0x20) or field[0] in b"01234567"):
        # tarfile reads the same from a header (it does not trim leading NULs: not those)
        block = bytearray(raw_header(b"n", th.REGULAR))
        block[108:116] = field
        assert tarfile.TarInfo.frombuf(fix_checksum(bytes(block)), ENC, ERRORS).uid == value


@pytest.mark.parametrize(
    "field", [b"0000648\0", b"12 34\0\0\0", b"-000001\0", b"+000001\0", b"0x12\0\0\0\0", b"1_2\0"]
)
def test_bad_octal_is_refused(field: bytes) -> None:
    with pytest.raises(th.HeaderError):
        parse_number(field)
    block = bytearray(raw_header(b"n", th.REGULAR))
    block[108:116] = field.ljust(8, b"\0")
    with pytest.raises(BadLayerError, match=r"offset 0: header uid"):
        parse(fix_checksum(bytes(block)) + END)


@pytest.mark.parametrize("typeflag", [th.REGULAR, th.CHAR])
def test_bad_device_numbers_are_refused_on_any_entry(typeflag: bytes) -> None:
    data = raw_header(b"n", typeflag, fields={"devminor": b"12x\0"}) + END
    with pytest.raises(BadLayerError, match=r"offset 0: header device number"):
        parse(data)


def test_device_numbers_are_kept_for_devices_only() -> None:
    fields = {"devmajor": b"0000010\0", "devminor": base256(70000, 8)}
    data = raw_header(b"f", th.REGULAR, fields=fields) + raw_header(b"b", th.BLOCK, fields=fields)
    assert [(h.devmajor, h.devminor) for h, _ in parse(data + END)] == [(0, 0), (8, 70000)]


def test_base256_beyond_64_bits_is_refused() -> None:
    with pytest.raises(th.HeaderError):
        parse_number(b"\x80" + b"\x01" + bytes(10))


def test_base256_size_is_read_through_the_stream() -> None:
    block = bytearray(raw_header(b"n", th.REGULAR))
    block[124:136] = base256(700, 12)
    data = with_data(fix_checksum(bytes(block)), b"z" * 700) + END
    [(header, body)] = assert_same_as_tarfile(data)
    assert (header.size, body) == (700, b"z" * 700)


def test_huge_base256_size_is_a_truncated_layer() -> None:
    block = bytearray(raw_header(b"n", th.REGULAR))
    block[124:136] = base256((1 << 33) + 1, 12)
    with pytest.raises(BadLayerError, match="truncated"):
        parse(fix_checksum(bytes(block)) + b"z" * 5000 + END)


def test_negative_size_is_refused() -> None:
    block = bytearray(raw_header(b"n", th.REGULAR))
    block[124:136] = base256(-5, 12)
    with pytest.raises(BadLayerError, match="size -5 is negative"):
        parse(fix_checksum(bytes(block)) + END)


def test_block_sum_is_exact() -> None:
    for block in (bytes(512), b"\xff" * 512, os.urandom(512), b"\xff" * 256 + bytes(256)):
        assert block_sum(block) == sum(block)


def test_signed_checksum_is_accepted() -> None:
    block = bytearray(raw_header("café".encode(), th.REGULAR))
    block[148:156] = b" " * 8
    signed = sum(b - 256 if b > 127 else b for b in block)
    block[148:156] = b"%06o\0 " % signed
    assert signed != sum(block)
    assert checksum_matches(bytes(block), bytes(block[148:156]), signed)
    assert [h.name for h, _ in parse(bytes(block) + END)] == ["café".encode()]


@pytest.mark.parametrize("which", [0, 1, 2])
def test_checksum_failure_names_the_offset(which: int) -> None:
    data = bytearray(write_tar([info("a", data=b"a" * 600), info("b"), info("c")], "ustar"))
    offset = [0, 1536, 2048][which]
    data[offset + 3] ^= 0x01  # a name byte
    with pytest.raises(BadLayerError, match=f"offset {offset}: header checksum"):
        parse(bytes(data))
    with pytest.raises(BadLayerError, match=f"offset {offset}: header checksum"):
        layer_entries(bytes(data))


def test_checksum_field_that_is_not_octal_is_refused() -> None:
    block = bytearray(raw_header(b"n", th.REGULAR))
    block[148:156] = b"\xff" * 8
    with pytest.raises(BadLayerError, match="offset 0: header checksum"):
        parse(bytes(block) + END)


# -- the end of the archive ----------------------------------------------------------------


def test_empty_stream_is_an_empty_layer() -> None:
    assert parse(b"") == []
    assert layer_entries(b"") == []


@pytest.mark.parametrize("end", [b"", bytes(512), bytes(1024), bytes(10240)])
def test_end_of_archive_variants(end: bytes) -> None:
    data = with_data(raw_header(b"a", th.REGULAR, 3), b"abc") + end
    assert [(h.name, body) for h, body in parse(data)] == [(b"a", b"abc")]


def test_zero_block_followed_by_data_is_refused() -> None:
    data = bytes(512) + raw_header(b"a", th.REGULAR) + END
    with pytest.raises(BadLayerError, match="offset 0: zero block followed by data"):
        parse(data)
    data = raw_header(b"a", th.REGULAR) + bytes(512) + b"\x01" + bytes(511)
    with pytest.raises(BadLayerError, match="offset 512: zero block followed by data"):
        parse(data)


def test_data_after_the_end_of_archive_is_ignored() -> None:
    data = raw_header(b"a", th.REGULAR) + END + b"trailing garbage"
    assert [h.name for h, _ in parse(data)] == [b"a"]


def test_dangling_meta_header_at_the_end_is_ignored() -> None:
    records = pax_record(b"path", b"p")
    data = raw_header(b"a", th.REGULAR) + with_data(
        raw_header(b"x", th.PAX_LOCAL, len(records)), records
    )
    assert [h.name for h, _ in parse(data + END)] == [b"a"]
    assert [h.name for h, _ in parse(data)] == [b"a"]


# -- limits and unsupported entries --------------------------------------------------------


def test_long_name_over_1_mib_is_refused() -> None:
    size = th.MAX_META_SIZE + 1
    data = with_data(raw_header(b"L", th.GNU_LONGNAME, size), b"n" * size) + END
    with pytest.raises(BadLayerError, match="GNU long name of 1048577 bytes"):
        parse(data)


def test_pax_header_over_1_mib_is_refused() -> None:
    records = pax_record(b"comment", b"c" * th.MAX_META_SIZE)
    data = with_data(raw_header(b"x", th.PAX_LOCAL, len(records)), records)
    with pytest.raises(BadLayerError, match="pax header of"):
        parse(data + raw_header(b"a", th.REGULAR) + END)


def test_global_pax_records_are_bounded() -> None:
    data = b""
    for i in range(3):
        records = pax_record(b"comment%d" % i, b"c" * (th.MAX_META_SIZE // 2))
        data += with_data(raw_header(b"g", th.PAX_GLOBAL, len(records)), records)
    with pytest.raises(BadLayerError, match="global pax records total"):
        parse(data + raw_header(b"a", th.REGULAR) + END)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (b"size", b"-1"),
        (b"size", b"12abc"),
        (b"size", b"1" * 30),
        (b"uid", b"x"),
        (b"gid", b"-3"),
        (b"mtime", b"abc"),
        (b"mtime", b".5"),
        (b"mtime", b"1" * 40),
        (b"path", b"a\0b"),
        (b"LIBARCHIVE.xattr.user.x", b"a"),
    ],
)
def test_bad_pax_values_are_refused(key: bytes, value: bytes) -> None:
    records = pax_record(key, value)
    data = with_data(raw_header(b"x", th.PAX_LOCAL, len(records)), records)
    with pytest.raises(BadLayerError, match="pax header"):
        parse(data + raw_header(b"a", th.REGULAR) + END)


@pytest.mark.parametrize(
    "records",
    [
        b"5 a=b",  # no newline
        b"7 a=b\n",  # length past the end
        b"4 a=\n",  # too short for its own length
        b"x a=b\n",
        b"6 ab\n\n",  # no "="
        b"6 =b\n\n",  # empty key
        b"99999999999999999999 a=b\n",
        b"6 a=b\n\0",  # trailing NUL
    ],
)
def test_malformed_pax_records_are_refused(records: bytes) -> None:
    with pytest.raises(th.HeaderError):
        parse_pax_records(records)
    data = with_data(raw_header(b"x", th.PAX_LOCAL, len(records)), records)
    with pytest.raises(BadLayerError, match="offset 0: pax header"):
        parse(data + raw_header(b"a", th.REGULAR) + END)


def test_pax_records_parse() -> None:
    records = pax_record(b"path", b"a=b c") + pax_record(b"k", b"") + pax_record(b"k2", b"\n\n")
    assert parse_pax_records(records) == {b"path": b"a=b c", b"k": b"", b"k2": b"\n\n"}
    assert parse_pax_records(b"") == {}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"0", (0, 0)),
        (b"1700000000", (1700000000, 0)),
        (b"1700000000.", (1700000000, 0)),
        (b"1.000000001", (1, 1)),
        (b"1.1234567899", (1, 123456789)),
        (b"-1", (-1, 0)),
        (b"-1.000000001", (-2, 999999999)),
        (b"-0.5", (-1, 500_000_000)),
        (b" 12.5 ", (12, 500_000_000)),
    ],
)
def test_pax_time(text: bytes, expected: tuple[int, int]) -> None:
    assert parse_pax_time(text) == expected


def test_gnu_sparse_type_is_unsupported() -> None:
    data = raw_header(b"sparse-file", th.GNU_SPARSE) + END
    with pytest.raises(UnsupportedError, match=rf"layer {LAYER}: 'sparse-file': GNU sparse"):
        parse(data)


@pytest.mark.parametrize("typeflag", [b"V", b"M", b"N", b"D", b"A", b"9"])
def test_unknown_type_is_unsupported(typeflag: bytes) -> None:
    data = raw_header(b"thing", typeflag) + END
    assert [h.typeflag for h, _ in parse(data)] == [typeflag]
    with pytest.raises(UnsupportedError, match=rf"'thing': tar entry type {typeflag!r}"):
        layer_entries(data)


def test_out_of_range_owner_is_refused() -> None:
    block = bytearray(raw_header(b"f", th.REGULAR))
    block[108:116] = base256(1 << 40, 8)
    with pytest.raises(BadLayerError, match="owner 1099511627776:0"):
        layer_entries(fix_checksum(bytes(block)) + END)


# -- data ------------------------------------------------------------------------------


def test_data_left_unread_is_skipped_and_read_data_yields_exact_blocks() -> None:
    big = os.urandom(3 * 4096 + 100)
    data = write_tar(
        [info("a", data=big), info("b", data=b"b" * 10), info("c", data=b"c" * 5000)], "gnu"
    )
    reader = TarHeaderReader(io.BytesIO(data), LAYER)
    header = reader.next()
    assert header is not None and header.name == b"a"
    blocks = zero_filled(reader.read_data(4096), 4096)
    first = next(blocks)
    assert len(first) == 4096  # exactly block_size: the chunker passes it on uncopied
    header = reader.next()  # the rest of a is skipped
    assert header is not None and header.name == b"b"
    header = reader.next()  # b is skipped whole
    assert header is not None and header.name == b"c"
    assert [len(b) for b in zero_filled(reader.read_data(4096), 4096)] == [4096, 904]
    assert list(reader.read_data(4096)) == []
    assert reader.next() is None
    assert reader.next() is None


def test_headers_are_the_same_whether_data_is_read_or_skipped() -> None:
    data = write_tar(python_members("pax"), "pax")
    read = [h for h, _ in parse(data, read_data=True)]
    skipped = [h for h, _ in parse(data, read_data=False)]
    assert read == skipped


class Trickle:
    """A stream whose reads return at most a few bytes."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = data
        self._pos = 0
        self._step = step

    def read(self, n: int) -> bytes:
        n = min(n, self._step, len(self._data) - self._pos)
        out = self._data[self._pos : self._pos + n]
        self._pos += n
        self._step = self._step % 700 + 1
        return out


def test_short_reads_parse_the_same() -> None:
    data = write_tar(python_members("pax"), "pax")
    expected = parse(data)
    for step in (1, 7, 511, 513):
        assert parse(cast(IO[bytes], Trickle(data, step))) == expected


# -- LayerReader on top ---------------------------------------------------------------------


def test_layer_entries_from_a_pax_archive() -> None:
    members = [
        info("./etc/", tarfile.DIRTYPE, mode=0o755),
        info("./etc/hosts", data=b"127.0.0.1\n", pax={"mtime": "5.000000007"}),
        info("/abs/../../x", data=b"x"),
        info("etc/.wh.gone", data=b""),
        info("etc/.wh..wh..opq", data=b""),
        info("bin/sh", tarfile.SYMTYPE, linkname="busybox"),
        info("bin/ls", tarfile.LNKTYPE, linkname="./bin/../bin/busybox"),
        info("dev/zero", tarfile.CHRTYPE, dev=(1, 5)),
        info("caps", data=b"", pax={"SCHILY.xattr.security.capability": "\x01\x00"}),
    ]
    entries = layer_entries(write_tar(members, "pax"))
    got = [(e.path, e.kind, body) for e, body in entries]
    assert got == [
        ((b"etc",), EntryKind.DIR, b""),
        ((b"etc", b"hosts"), EntryKind.FILE, b"127.0.0.1\n"),
        ((b"x",), EntryKind.FILE, b"x"),
        ((b"etc", b"gone"), EntryKind.WHITEOUT, b""),
        ((b"etc",), EntryKind.OPAQUE, b""),
        ((b"bin", b"sh"), EntryKind.SYMLINK, b""),
        ((b"bin", b"ls"), EntryKind.HARDLINK, b""),
        ((b"dev", b"zero"), EntryKind.CHAR, b""),
        ((b"caps",), EntryKind.FILE, b""),
    ]
    assert entries[0][0].mode == stat.S_IFDIR | 0o755
    e = {entry.path: entry for entry, _ in entries}
    assert (e[(b"etc", b"hosts")].mtime_sec, e[(b"etc", b"hosts")].mtime_nsec) == (5, 7)
    assert e[(b"bin", b"sh")].link_target == b"busybox"
    assert e[(b"bin", b"sh")].size == 7
    assert e[(b"bin", b"ls")].link_path == (b"bin", b"busybox")
    assert e[(b"bin", b"ls")].mode == 0o644  # no type bits for hardlinks
    assert e[(b"dev", b"zero")].rdev == os.makedev(1, 5)
    assert e[(b"caps",)].xattrs == {b"security.capability": b"\x01\x00"}


def test_layer_reader_errors_surface_while_iterating() -> None:
    reader = LayerReader(io.BytesIO(b"not a tar" * 100), LAYER)  # no error yet
    with pytest.raises(BadLayerError, match=f"layer {LAYER}: broken tar: at offset 0"):
        list(reader.entries())


# -- GNU tar -------------------------------------------------------------------------------


def _gnu_tar_tree(root: Path) -> None:
    root.mkdir()
    (root / "dir").mkdir()
    (root / "dir" / "file").write_bytes(b"hello\n" * 1000)
    (root / "dir" / "empty").write_bytes(b"")
    os.symlink("file", root / "dir" / "link")
    os.link(root / "dir" / "file", root / "dir" / "hard")
    long_dir = root / ("a" * 90) / ("b" * 90) / ("c" * 90)
    long_dir.mkdir(parents=True)
    (long_dir / ("f" * 120)).write_bytes(b"long\n")
    os.symlink("t" * 200, root / "long-link")
    os.link(long_dir / ("f" * 120), root / "hard-to-long")
    os.mkfifo(root / "fifo")
    latin = os.fsencode(root) + b"/caf\xe9"
    with open(latin, "wb") as f:
        f.write(b"latin-1\n")
    ids = root / "ids"
    ids.write_bytes(b"ids\n")
    if os.geteuid() == 0:
        os.chown(ids, 3_000_000, 2_097_152)
        os.mknod(root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        os.mknod(root / "blk", stat.S_IFBLK | 0o660, os.makedev(259, 70000))
    os.chmod(ids, 0o4711)  # after chown, which clears set-user-ID
    try:
        os.setxattr(root / "dir" / "file", "user.text", b"plain")
        os.setxattr(root / "dir" / "file", "user.bin", b"\xff\x00\x01\x80")
    except OSError:
        pass  # no user xattrs on this filesystem: the rest still counts
    for directory, dirnames, filenames in os.walk(os.fsencode(root)):
        for name in [*dirnames, *filenames]:
            os.utime(
                os.path.join(directory, name),
                ns=(1, 1_700_000_000_123_456_789),
                follow_symlinks=False,
            )


@pytest.fixture(scope="module")
def gnu_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("tar") is None:
        pytest.skip("GNU tar is not installed")
    root = tmp_path_factory.mktemp("gnutar") / "root"
    _gnu_tar_tree(root)
    return root


def _gnu_tar(root: Path, *options: str) -> bytes:
    return subprocess.run(
        ["tar", *options, "--numeric-owner", "-cf", "-", "-C", str(root), "."],
        check=True,
        capture_output=True,
        env={**os.environ, "LC_ALL": "C"},
    ).stdout


@pytest.mark.parametrize(
    "options",
    [("--format=gnu",), ("--format=posix", "--xattrs", "--xattrs-include=*")],
    ids=["gnu", "posix"],
)
def test_gnu_tar_archives_parse_as_tarfile_reads_them(
    gnu_tree: Path, options: tuple[str, ...]
) -> None:
    data = _gnu_tar(gnu_tree, *options)
    ours = assert_same_as_tarfile(data)
    by_name = {h.name: h for h, _ in ours}
    long_name = b"./" + b"/".join([b"a" * 90, b"b" * 90, b"c" * 90, b"f" * 120])
    assert by_name[long_name].size == 5
    assert by_name[b"./long-link"].linkname == b"t" * 200
    assert by_name[b"./hard-to-long"].linkname == long_name
    assert b"./caf\xe9" in by_name
    if os.geteuid() == 0:
        assert (by_name[b"./ids"].uid, by_name[b"./ids"].gid) == (3_000_000, 2_097_152)
        assert (by_name[b"./blk"].devmajor, by_name[b"./blk"].devminor) == (259, 70000)
    if "--format=posix" in options:
        file = by_name[b"./dir/file"]
        assert (file.mtime_sec, file.mtime_nsec) == (1_700_000_000, 123_456_789)
        if _has_xattr(gnu_tree / "dir" / "file"):
            assert file.xattrs == {b"user.text": b"plain", b"user.bin": b"\xff\x00\x01\x80"}
    # And the layer view of the same archive.
    entries = {e.path: e for e, _ in layer_entries(data)}
    one, two = entries[(b"dir", b"file")], entries[(b"dir", b"hard")]
    link, target = (two, one) if two.kind is EntryKind.HARDLINK else (one, two)
    assert (link.kind, link.link_path, target.kind) == (
        EntryKind.HARDLINK,
        target.path,
        EntryKind.FILE,
    )
    assert entries[(b"fifo",)].kind is EntryKind.FIFO


def _has_xattr(path: Path) -> bool:
    try:
        return os.getxattr(path, "user.text", follow_symlinks=False) == b"plain"
    except OSError:
        return False


def _sparse_tree(root: Path) -> dict[bytes, bytes]:
    """Files with holes at the start, in the middle and at the end, and a file that is
    all hole; their contents by archive name."""
    root.mkdir()
    layouts = {
        "holes": [(1 << 20, b"data"), (3 << 20, b"more data")],
        "tail-hole": [(0, b"head")],
        "all-hole": [],
        "dense": [(0, os.urandom(70_000))],
    }
    sizes = {"holes": 4 << 20, "tail-hole": 2 << 20, "all-hole": 3 << 20, "dense": 70_000}
    expected: dict[bytes, bytes] = {}
    for name, pieces in layouts.items():
        content = bytearray(sizes[name])
        with open(root / name, "wb") as f:
            for offset, data in pieces:
                f.seek(offset)
                f.write(data)
                content[offset : offset + len(data)] = data
            f.truncate(sizes[name])
        expected[b"./" + name.encode()] = bytes(content)
    return expected


@pytest.mark.parametrize("version", ["0.0", "0.1", "1.0"])
def test_gnu_tar_pax_sparse_files_read_with_their_holes(tmp_path: Path, version: str) -> None:
    expected = _sparse_tree(tmp_path / "root")
    data = _gnu_tar(tmp_path / "root", "--format=posix", "--sparse", f"--sparse-version={version}")
    assert b"GNU.sparse." in data  # GNU tar did write sparse entries
    ours = assert_same_as_tarfile(data)  # names, real sizes and contents, as tarfile reads
    files = {h.name: body for h, body in ours if h.typeflag == th.REGULAR}
    assert files == expected
    entries = {e.path: (e, body) for e, body in layer_entries(data)}
    for name, content in expected.items():
        entry, body = entries[(name[2:],)]
        assert (entry.kind, entry.size, body) == (EntryKind.FILE, len(content), content)


def test_sparse_file_holes_are_zero_runs_never_bytes() -> None:
    records = (
        pax_record(b"GNU.sparse.size", b"%d" % (3 * 4096 + 10))
        + pax_record(b"GNU.sparse.numblocks", b"1")
        + pax_record(b"GNU.sparse.offset", b"4100")
        + pax_record(b"GNU.sparse.numbytes", b"5")
    )
    data = (
        with_data(raw_header(b"x", th.PAX_LOCAL, len(records)), records)
        + with_data(raw_header(b"s", th.REGULAR, 5), b"abcde")
        + END
    )
    reader = TarHeaderReader(io.BytesIO(data), LAYER)
    header = reader.next()
    assert header is not None and (header.name, header.size) == (b"s", 3 * 4096 + 10)
    pieces = [p if isinstance(p, ZeroRun) else bytes(p) for p in reader.read_data(4096)]
    assert pieces == [ZeroRun(4100), b"abcde", ZeroRun(3 * 4096 + 10 - 4105)]
    assert reader.next() is None


def test_zero_filled_gives_the_holes_as_bytes_in_blocks() -> None:
    pieces: list[Piece] = [ZeroRun(10), b"ab", ZeroRun(3), ZeroRun(0)]
    blocks = list(zero_filled(pieces, 4))
    assert [len(b) for b in blocks] == [4, 4, 2, 2, 3]
    assert b"".join(blocks) == bytes(10) + b"ab" + bytes(3)


def test_unknown_sparse_version_is_a_regular_file() -> None:
    # Go reads it as a plain file; so does Ketch (the data is the file as stored).
    records = pax_record(b"GNU.sparse.major", b"2") + pax_record(b"GNU.sparse.minor", b"0")
    data = (
        with_data(raw_header(b"x", th.PAX_LOCAL, len(records)), records)
        + with_data(raw_header(b"plain", th.REGULAR, 4), b"body")
        + END
    )
    [(header, body)] = parse(data)
    assert (header.name, header.size, body) == (b"plain", 4, b"body")


def _pax(records: bytes) -> bytes:
    return with_data(raw_header(b"x", th.PAX_LOCAL, len(records)), records)


def _sparse_0x(size: int, pairs: list[tuple[int, int]], numblocks: int | None = None) -> bytes:
    records = pax_record(b"GNU.sparse.size", b"%d" % size)
    count = len(pairs) if numblocks is None else numblocks
    records += pax_record(b"GNU.sparse.numblocks", b"%d" % count)
    for offset, length in pairs:
        records += pax_record(b"GNU.sparse.offset", b"%d" % offset)
        records += pax_record(b"GNU.sparse.numbytes", b"%d" % length)
    return with_data(raw_header(b"x", th.PAX_LOCAL, len(records)), records)


def _sparse_1x0(size: int, map_text: bytes, stored: bytes) -> bytes:
    records = (
        pax_record(b"GNU.sparse.major", b"1")
        + pax_record(b"GNU.sparse.minor", b"0")
        + pax_record(b"GNU.sparse.name", b"real")
        + pax_record(b"GNU.sparse.realsize", b"%d" % size)
    )
    body = map_text + bytes(-len(map_text) % 512) + stored
    return (
        with_data(raw_header(b"x", th.PAX_LOCAL, len(records)), records)
        + with_data(raw_header(b"GNUSparseFile.0/real", th.REGULAR, len(body)), body)
        + END
    )


def test_sparse_1x0_map_spanning_blocks() -> None:
    pairs = [(i * 1000, 10) for i in range(80)]  # a map of more than one 512-byte block
    map_text = b"".join(b"%d\n" % n for n in [len(pairs), *[x for p in pairs for x in p]])
    assert len(map_text) > 512
    stored = bytes(range(10)) * 80
    [(header, body)] = parse(_sparse_1x0(80_000, map_text, stored))
    assert (header.name, header.size) == (b"real", 80_000)
    expected = bytearray(80_000)
    for i, (offset, length) in enumerate(pairs):
        expected[offset : offset + length] = stored[i * 10 : i * 10 + 10]
    assert body == bytes(expected)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            _sparse_0x(100, [(50, 10), (55, 10)])
            + with_data(raw_header(b"s", th.REGULAR, 20), bytes(20)),
            "overlaps",
        ),
        (
            _sparse_0x(100, [(95, 10)]) + with_data(raw_header(b"s", th.REGULAR, 10), bytes(10)),
            "ends past the real size 100",
        ),
        (
            _sparse_0x(100, [(0, 10)]) + with_data(raw_header(b"s", th.REGULAR, 12), bytes(12)),
            "hold 10 bytes, the entry stores 12",
        ),
        (
            _sparse_0x(100, [(0, 10)], numblocks=2)
            + with_data(raw_header(b"s", th.REGULAR, 10), bytes(10)),
            "expected 4 numbers for 2 fragments",
        ),
        (
            _pax(pax_record(b"GNU.sparse.size", b"-5"))
            + with_data(raw_header(b"s", th.REGULAR, 0), b""),
            "GNU.sparse.size",
        ),
        (
            _sparse_1x0(100, b"1\n0\n", b"")[:-1024],  # the map ends in the middle
            "sparse map",
        ),
        (
            _sparse_1x0(10**6, b"1000000\n" + b"1\n" * 1000, b"")[:-1024],  # more than stored
            "sparse map",
        ),
    ],
)
def test_broken_sparse_maps_are_refused(entry: bytes, message: str) -> None:
    with pytest.raises(BadLayerError, match=message):
        parse(entry + END)


def test_old_gnu_sparse_type_is_refused_as_umoci_refuses_it(tmp_path: Path) -> None:
    _sparse_tree(tmp_path / "root")
    data = _gnu_tar(tmp_path / "root", "--format=gnu", "--sparse")
    with pytest.raises(UnsupportedError, match=r"'\./(holes|tail-hole|all-hole)': GNU sparse"):
        layer_entries(data)


# -- broken archives -----------------------------------------------------------------------


def _layout(data: bytes) -> tuple[list[int], list[int], int]:
    """Where every header block starts and where each real entry's own header is, read with
    tarfile's block decoder (the oracle), and where the end-of-archive block is."""
    starts: list[int] = []
    entries: list[int] = []
    pos = 0
    while data[pos : pos + 512] != bytes(512):
        ti = tarfile.TarInfo.frombuf(data[pos : pos + 512], ENC, ERRORS)
        starts.append(pos)
        meta = ti.type in (b"x", b"g", b"L", b"K")
        if not meta:
            entries.append(pos)
        has_data = meta or ti.isreg()
        pos += 512 + (-(-ti.size // 512) * 512 if has_data else 0)
    starts.append(pos)
    return starts, entries, pos


def _small_archive() -> bytes:
    members = [
        info("dir", tarfile.DIRTYPE),
        info("dir/a", data=b"a" * 700),
        info("l" * 130, data=b"long"),
        info("s", tarfile.SYMTYPE, linkname="x" * 150),
        info("x", data=b"", pax={"SCHILY.xattr.user.k": "v", "mtime": "1.5"}),
        info("z", data=b"z" * 512),
    ]
    data = write_tar(members, "pax", pax_headers={"comment": "g"})
    return data[: _layout(data)[2] + 1024]


@pytest.mark.parametrize("read_data", [True, False], ids=["read", "skip"])
def test_truncation_at_every_offset(read_data: bool) -> None:
    data = _small_archive()
    starts, entry_headers, end = _layout(data)
    full = parse(data, read_data=read_data)
    assert len(full) == len(entry_headers)
    for cut in range(len(data) + 1):
        clean = cut in starts or cut == end + 512 or cut >= end + 1024
        try:
            got = parse(data[:cut], read_data=read_data)
        except BadLayerError as exc:
            assert not clean, f"cut at {cut}: {exc}"
            continue
        assert clean, f"cut at {cut}: parsed {len(got)} entries, expected BadLayerError"
        assert got == full[: sum(1 for h in entry_headers if h < cut)], f"cut at {cut}"


def test_truncated_layer_entries_never_escape_as_other_errors() -> None:
    data = _small_archive()
    for cut in range(0, len(data), 7):
        with contextlib.suppress(KetchError):
            layer_entries(data[:cut])


def _parse_anything(data: bytes) -> None:
    for reader_read in (True, False):
        with contextlib.suppress(KetchError):
            parse(data, read_data=reader_read)
        with contextlib.suppress(KetchError):
            layer_entries(data, read_data=reader_read)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_random_bytes_only_raise_ketch_errors(data: bytes) -> None:
    _parse_anything(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=1, max_size=600).map(lambda b: b.ljust(512, b"\0")[:512]))
def test_random_header_blocks_with_good_checksums_only_raise_ketch_errors(block: bytes) -> None:
    _parse_anything(fix_checksum(block) + bytes(1024))


_ARCHIVE = _small_archive()
_STARTS = _layout(_ARCHIVE)[0]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.integers(0, len(_ARCHIVE) - 1), st.integers(0, 255)), min_size=1, max_size=8
    ),
    st.booleans(),
    st.integers(0, len(_ARCHIVE)),
)
def test_mutated_archives_only_raise_ketch_errors(
    changes: list[tuple[int, int]], fix: bool, cut: int
) -> None:
    data = bytearray(_ARCHIVE)
    for pos, value in changes:
        data[pos] = value
    if fix:  # mutations that keep every header's checksum good reach the field decoders
        for start in _STARTS[:-1]:
            data[start : start + 512] = fix_checksum(bytes(data[start : start + 512]))
    _parse_anything(bytes(data))
    _parse_anything(bytes(data[:cut]))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                [
                    b"path",
                    b"linkpath",
                    b"size",
                    b"uid",
                    b"gid",
                    b"mtime",
                    b"SCHILY.xattr.a",
                    b"LIBARCHIVE.xattr.b",
                    b"GNU.sparse.major",
                    b"other",
                ]
            ),
            st.binary(max_size=30),
        ),
        max_size=6,
    ),
    st.sampled_from([th.PAX_LOCAL, th.PAX_GLOBAL]),
)
def test_random_pax_records_only_raise_ketch_errors(
    records: list[tuple[bytes, bytes]], typeflag: bytes
) -> None:
    body = b"".join(pax_record(k, v) for k, v in records)
    data = with_data(raw_header(b"p", typeflag, len(body)), body)
    _parse_anything(data + raw_header(b"a", th.REGULAR, 5) + b"abcde".ljust(512, b"\0") + END)


def test_a_petabyte_of_holes_reads_as_one_zero_run() -> None:
    # A few bytes of map for 2^50 bytes: the reader hands the hole on unread (what it
    # costs is bounded where it is spent: the layer builder's chunk references).
    huge = _sparse_0x(1 << 50, [(1 << 49, 5)]) + with_data(
        raw_header(b"lastlog", th.REGULAR, 5), b"abcde"
    )
    reader = TarHeaderReader(io.BytesIO(huge + END), LAYER)
    header = reader.next()
    assert header is not None and (header.name, header.size) == (b"lastlog", 1 << 50)
    pieces = [p if isinstance(p, ZeroRun) else bytes(p) for p in reader.read_data(1 << 20)]
    assert pieces == [ZeroRun(1 << 49), b"abcde", ZeroRun((1 << 49) - 5)]
    assert reader.next() is None
