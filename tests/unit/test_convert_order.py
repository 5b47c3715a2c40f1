"""Conversion does not depend on how a layer is written: generated trees with hardlink
groups, duplicate files and chunks shared across files, each written in random orders,
with random choices of the hardlink name that carries the data, at random gzip levels,
must convert to byte-identical images (every blob, the bootstrap, the config, the
manifest but for its naming of the source)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.fixtures import ocilayout as ol
from tests.fixtures.converted import image_bytes
from tests.fixtures.ketch import convert, image_fs

CHUNK = 4096
NS = 1_612_325_106_123_456_789
_NAMES = ["a", "b", "c", "a0", "b-c"]


@dataclass(frozen=True)
class Group:
    """One inode: its names (a hardlink group when more than one) and its content."""

    names: tuple[str, ...]
    data: bytes


@dataclass(frozen=True)
class Tree:
    directories: tuple[str, ...]
    groups: tuple[Group, ...]


def _content(blocks: list[bytes], picks: list[int], tail: int, seed: int) -> bytes:
    """Whole chunks from a shared pool (so files share chunks), and a short tail."""
    return b"".join(blocks[i] for i in picks) + random.Random(seed).randbytes(tail)


@st.composite
def trees(draw: st.DrawFn) -> Tree:
    seed = draw(st.integers(0, 2**16))
    rng = random.Random(seed)
    blocks = [rng.randbytes(CHUNK) for _ in range(4)] + [b"z" * CHUNK, bytes(CHUNK)]
    paths = draw(
        st.lists(
            st.lists(st.sampled_from(_NAMES), min_size=1, max_size=3).map("/".join),
            min_size=4,
            max_size=14,
            unique=True,
        )
    )
    # A file cannot be the parent of another path.
    paths = [p for p in paths if not any(q.startswith(p + "/") for q in paths)]
    contents = draw(
        st.lists(
            st.tuples(st.lists(st.integers(0, len(blocks) - 1), max_size=4), st.integers(0, 300)),
            min_size=1,
            max_size=4,
        )
    )
    datas = [_content(blocks, picks, tail, seed + n) for n, (picks, tail) in enumerate(contents)]
    groups: list[Group] = []
    rest = paths[:]
    while rest:
        size = min(draw(st.sampled_from([2, 1, 3])), len(rest))
        names, rest = tuple(rest[:size]), rest[size:]
        # Several groups may take the same content: duplicate files under other names.
        groups.append(Group(names, datas[draw(st.integers(0, len(datas) - 1))]))
    parents: set[str] = set()
    for path in paths:
        parts = path.split("/")[:-1]
        parents.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    return Tree(tuple(sorted(parents)), tuple(groups))


def _layer(tree: Tree, rng: random.Random | None) -> bytes:
    """The tree as a tar: in path order with each group's data at its first name when
    ``rng`` is None, else in a random order, each group's data at a random name."""
    entries = [ol.dir(d, mtime_ns=NS) for d in tree.directories]
    links: list[tuple[str, ol.TarEntry]] = []
    for number, group in enumerate(tree.groups):
        names = sorted(group.names) if rng is None else rng.sample(group.names, len(group.names))
        carrier = names[0]
        entries.append(ol.file(carrier, group.data, mtime_ns=NS + number, mode=0o640))
        links += [(carrier, ol.hardlink(n, carrier, mtime_ns=NS + number)) for n in names[1:]]
    if rng is None:
        entries.sort(key=lambda e: str(e.name).split("/"))
        return ol.tar_bytes(entries + [link for _, link in links])
    rng.shuffle(entries)
    for carrier, link in links:  # a link after the entry it names, anywhere after it
        after = next(i for i, e in enumerate(entries) if e.name == carrier) + 1
        entries.insert(rng.randrange(after, len(entries) + 1), link)
    return ol.tar_bytes(entries)


def _converted(tmp_path: Path, name: str, layer: bytes, level: int) -> dict[str, bytes]:
    source = tmp_path / f"{name}-src"
    ol.write_oci_layout(source, "t", [layer], level=level)
    convert(source, "t", tmp_path / name, "t", chunk_size=CHUNK, workers=2)
    return image_bytes(tmp_path / name, "t")


# No shrinking: each example is a few conversions, and the drawn trees are small already.
@settings(
    max_examples=25,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(trees(), st.randoms(use_true_random=True), st.sampled_from([1, 6, 9]))
def test_any_tar_order_and_link_name_gives_byte_identical_images(
    tmp_path_factory: pytest.TempPathFactory, tree: Tree, rng: random.Random, level: int
) -> None:
    tmp_path = tmp_path_factory.mktemp("order")
    expected = _converted(tmp_path, "canonical", _layer(tree, None), 6)
    for n in range(3):
        assert _converted(tmp_path, f"shuffled{n}", _layer(tree, rng), level) == expected
    # And the image is the tree: every group one inode, with its content.
    fs = image_fs(tmp_path / "canonical", "t")
    for group in tree.groups:
        inodes = {fs.resolve("/" + name) for name in group.names}
        assert len(inodes) == 1
        ino = inodes.pop()
        assert fs.getattr(ino).nlink == len(group.names)
        assert fs.read(ino, 0, len(group.data) + 1) == group.data


def test_a_link_to_an_earlier_link_names_the_same_file(tmp_path: Path) -> None:
    # Valid in tar order (``z`` exists when ``a`` is read), though ``a`` sorts first.
    layer = ol.tar_bytes([ol.file("m", b"data"), ol.hardlink("z", "m"), ol.hardlink("a", "z")])
    ol.write_oci_layout(tmp_path / "src", "t", [layer])
    convert(tmp_path / "src", "t", tmp_path / "dst", "t")
    fs = image_fs(tmp_path / "dst", "t")
    assert fs.resolve("/a") == fs.resolve("/m") == fs.resolve("/z")
    assert fs.getattr(fs.resolve("/a")).nlink == 3
