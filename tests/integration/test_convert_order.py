"""A real image converts to the same bytes however its layer is written.

The corpus ``base`` image's layer is rewritten with the same entries: siblings in
reverse order, each hardlink group's other name written first (as the file) and the
first name as the link, gzip at another level. Both convert to byte-identical images.
"""

from __future__ import annotations

import copy
import gzip
import io
import json
import tarfile
from pathlib import Path
from typing import Any

from tests.fixtures import ocilayout as ol
from tests.fixtures.converted import image_bytes
from tests.integration.ketch_cli import ketch


def _manifest(layout: Path, tag: str) -> dict[str, Any]:
    index = json.loads((layout / "index.json").read_bytes())
    digest = next(
        m["digest"]
        for m in index["manifests"]
        if m.get("annotations", {}).get(ol.REF_NAME_ANNOTATION) == tag
    )
    manifest: dict[str, Any] = json.loads(_blob(layout, digest))
    return manifest


def _blob(layout: Path, digest: str) -> bytes:
    return (layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()


def _put(layout: Path, data: bytes) -> dict[str, Any]:
    digest = ol.sha256_digest(data)
    path = layout / "blobs" / "sha256" / digest.removeprefix("sha256:")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"digest": digest, "size": len(data)}


def _with_layer(source: Path, tag: str, dest: Path, layer: bytes, level: int) -> None:
    """``source:tag`` (one layer) with ``layer`` as its layer, as ``dest:tag``."""
    manifest = _manifest(source, tag)
    config = json.loads(_blob(source, manifest["config"]["digest"]))
    config["rootfs"]["diff_ids"] = [ol.sha256_digest(layer)]
    (descriptor,) = manifest["layers"]
    manifest["layers"] = [{**descriptor, **_put(dest, gzip.compress(layer, level, mtime=0))}]
    manifest["config"] = {**manifest["config"], **_put(dest, json.dumps(config).encode())}
    entry = {**_put(dest, json.dumps(manifest).encode()), "mediaType": ol.MEDIA_TYPE_MANIFEST}
    entry["annotations"] = {ol.REF_NAME_ANNOTATION: tag}
    (dest / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    (dest / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))


def _renamed(info: tarfile.TarInfo, name: str) -> tarfile.TarInfo:
    out = copy.copy(info)
    out.pax_headers = {k: v for k, v in info.pax_headers.items() if k not in ("path", "linkpath")}
    out.name = name
    return out


def _rewritten(layer: bytes) -> tuple[bytes, int]:
    """The layer's entries in reverse sibling order, every hardlink group's data at its
    last name; and the number of groups rewritten."""
    members: dict[str, tuple[tarfile.TarInfo, bytes]] = {}
    with tarfile.open(fileobj=io.BytesIO(layer), mode="r:", errors="surrogateescape") as tar:
        for info in tar:
            data = tar.extractfile(info).read() if info.isreg() else b""  # type: ignore[union-attr]
            members[info.name.rstrip("/")] = (info, data)
    groups: dict[str, list[str]] = {}
    for name, (info, _) in members.items():
        if info.islnk():
            groups.setdefault(info.linkname.rstrip("/"), []).append(name)
    for first, others in groups.items():
        carrier = others[-1]
        info, data = members[first]
        members[carrier] = (_renamed(info, carrier), data)
        for name in [first, *others[:-1]]:
            link = _renamed(members[name][0] if name != first else info, name)
            link.type, link.linkname, link.size = tarfile.LNKTYPE, carrier, 0
            members[name] = (link, b"")
    # Depth-first with children in reverse name order, a link right after its file.
    children: dict[str, list[str]] = {}
    for name in members:
        if name != ".":
            parent = name.rpartition("/")[0] or "."
            children.setdefault(parent, []).append(name)
    order: list[str] = []
    waiting: dict[str, list[str]] = {}
    stack = ["."] if "." in members else sorted(children.get(".", []))
    while stack:
        name = stack.pop()
        info = members[name][0]
        if info.islnk() and info.linkname not in order:
            waiting.setdefault(info.linkname, []).append(name)
        else:
            order.append(name)
            order += waiting.pop(name, [])
        stack += sorted(children.get(name, []))  # popped last first: reverse order
    out = io.BytesIO()
    with tarfile.open(
        fileobj=out, mode="w:", format=tarfile.PAX_FORMAT, errors="surrogateescape"
    ) as tar:
        for name in order:
            info, data = members[name]
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    if len(order) != len(members) or waiting:
        raise ValueError(f"rewrite lost entries: {len(members)} in, {len(order)} out")
    return out.getvalue(), len(groups)


def test_a_rewritten_base_layer_converts_to_the_same_bytes(
    corpus_oci: Path, tmp_path: Path
) -> None:
    (layer,) = _manifest(corpus_oci, "base")["layers"]
    assert layer["mediaType"] == ol.LAYER_MEDIA_TYPES["gzip"]
    rewritten, groups = _rewritten(gzip.decompress(_blob(corpus_oci, layer["digest"])))
    assert groups >= 2  # the base image has hardlinks (perl, gunzip)
    _with_layer(corpus_oci, "base", tmp_path / "source", rewritten, level=1)
    ketch("convert", f"oci:{corpus_oci}:base", f"oci:{tmp_path / 'a'}:base")
    ketch("convert", f"oci:{tmp_path / 'source'}:base", f"oci:{tmp_path / 'b'}:base")
    first, second = image_bytes(tmp_path / "a", "base"), image_bytes(tmp_path / "b", "base")
    assert first.keys() == second.keys()
    assert first == second
