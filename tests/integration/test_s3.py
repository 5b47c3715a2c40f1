"""S3 end to end, on a moto server on loopback: convert a corpus image into a bucket with
the CLI, check it, unpack it (equal to umoci's tree), mount it lazily with ranged GETs;
and what only the S3 store does (its layout on the wire, a missing bucket, the endpoint
from the environment, server-side copies).

The CLI has no ``--endpoint-url`` option yet: these tests set ``AWS_ENDPOINT_URL``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ketch.cli.main import main
from ketch.config import S3Config, StoreOptions
from ketch.daemon.api import api_get
from ketch.daemon.state import read_record
from ketch.errors import NotFoundError
from ketch.image.layout import KETCH_BOOTSTRAP
from ketch.oci import mediatypes as mt
from ketch.storage.oci_layout_store import OciLayoutStore
from ketch.storage.open import open_store
from ketch.storage.s3_store import S3Store
from ketch.storage.store import ImageStore
from tests.fixtures.s3 import s3_bucket_fixture, s3_client, s3_endpoint_fixture  # noqa: F401 (fixtures)
from tests.treecmp import compare_trees

pytestmark = pytest.mark.integration

KETCH = [sys.executable, "-m", "ketch.cli.main"]
TAG = "py1"


def run_main(*argv: str) -> tuple[int, str]:
    """``ketch ARGV`` in this process: exit code and standard output."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(argv))
    return code, out.getvalue()


@pytest.fixture(scope="module")
def s3_image(s3_endpoint: str, corpus_oci: Path) -> Iterator[tuple[str, dict[str, object]]]:
    """Corpus ``py1`` converted by ``ketch convert`` to ``s3://BUCKET/images:py1``, once per
    module: its reference and the convert summary."""
    bucket = f"ketch-e2e-{os.getpid()}"
    s3_client(s3_endpoint).create_bucket(Bucket=bucket)
    reference = f"s3://{bucket}/images:{TAG}"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ENDPOINT_URL", s3_endpoint)
        code, out = run_main("convert", f"oci:{corpus_oci}:{TAG}", reference, "--json")
    assert code == 0, out
    yield reference, json.loads(out)


@pytest.fixture(autouse=True)
def endpoint_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    return s3_endpoint


# -- end to end through the CLI ---------------------------------------------------------


def test_convert_writes_an_oci_layout_under_the_prefix(
    s3_image: tuple[str, dict[str, object]],
    s3_endpoint: str,
    tmp_path: Path,
) -> None:
    reference, summary = s3_image
    bucket = reference[len("s3://") :].split("/")[0]
    client = s3_client(s3_endpoint)
    keys = {
        obj["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for obj in page.get("Contents", [])
    }
    assert {"images/oci-layout", "images/index.json"} <= keys
    assert all(
        k.startswith("images/blobs/sha256/")
        for k in keys - {"images/oci-layout", "images/index.json"}
    )
    # The same bytes in a directory are a layout that the oci: store reads as it is.
    local = tmp_path / "layout"
    for key in keys:
        path = local / key[len("images/") :]
        path.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(bucket, key, str(path))
    descriptor, manifest, _ = OciLayoutStore.open(local).resolve(TAG)
    assert descriptor.digest == summary["manifest_digest"]
    assert manifest.layers[-1].media_type == KETCH_BOOTSTRAP


def test_check_reads_every_chunk_from_s3(s3_image: tuple[str, dict[str, object]]) -> None:
    reference, summary = s3_image
    code, out = run_main("check", reference, "--json")
    report = json.loads(out)
    assert code == 0, out
    assert report["ok"] is True
    assert report["reference"] == reference
    assert report["blobs"] == len(summary["blobs"])  # type: ignore[arg-type]


def test_the_endpoint_url_option_overrides_the_environment(
    s3_image: tuple[str, dict[str, object]], s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference, _ = s3_image
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard: nobody answers
    code, out = run_main("inspect", reference, "--endpoint-url", s3_endpoint, "--json")
    assert code == 0, out
    assert json.loads(out)["reference"] == reference


def test_unpack_from_s3_equals_umoci(
    s3_image: tuple[str, dict[str, object]],
    corpus_oci: Path,
    umoci_unpacked: Callable[[Path, str], Path],
    tmp_path: Path,
) -> None:
    reference, _ = s3_image
    code, out = run_main("unpack", reference, str(tmp_path / "tree"), "--json")
    assert code == 0, out
    differences = compare_trees(umoci_unpacked(corpus_oci, TAG), tmp_path / "tree")
    assert differences == [], "\n".join(str(d) for d in differences[:20])


@pytest.fixture
def state_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """This test's daemons register under its own state dir; all are stopped at the end.
    The dir is short, not under ``tmp_path``: the API socket's path must fit in 108 bytes."""
    state = Path(tempfile.mkdtemp(prefix="ketch-state-"))
    monkeypatch.setenv("KETCH_STATE_DIR", str(state))
    yield state
    for record in (state / "mounts").glob("*.json") if (state / "mounts").exists() else []:
        mountpoint = json.loads(record.read_text())["mountpoint"]
        subprocess.run([*KETCH, "umount", mountpoint], capture_output=True, check=False)
    shutil.rmtree(state, ignore_errors=True)


def test_mount_from_s3_reads_lazily(
    s3_image: tuple[str, dict[str, object]],
    corpus_oci: Path,
    umoci_unpacked: Callable[[Path, str], Path],
    tmp_path: Path,
    state_dir: Path,
    endpoint_env: str,
) -> None:
    reference, summary = s3_image
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    env = {**os.environ, "AWS_ENDPOINT_URL": endpoint_env, "KETCH_STATE_DIR": str(state_dir)}
    mounted = subprocess.run(
        [*KETCH, "mount", reference, str(mountpoint), "--cache-dir", str(tmp_path / "cache")],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert mounted.returncode == 0, mounted.stderr
    try:
        record = read_record(mountpoint)
        assert record is not None
        expected = (umoci_unpacked(corpus_oci, TAG) / "app" / "main.py").read_bytes()
        assert (mountpoint / "app" / "main.py").read_bytes() == expected
        metrics = api_get(Path(record.api_sock), "/metrics").decode()
        fetched = next(
            float(line.split()[1])
            for line in metrics.splitlines()
            if line.startswith("ketch_backend_read_bytes_total ")
        )
        assert 0 < fetched < int(summary["stored_bytes"]) / 10  # type: ignore[call-overload]
    finally:
        result = subprocess.run(
            [*KETCH, "umount", str(mountpoint)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    assert not os.path.ismount(mountpoint)


def test_run_a_container_from_s3(
    s3_image: tuple[str, dict[str, object]], tmp_path: Path, state_dir: Path, endpoint_env: str
) -> None:
    reference, _ = s3_image
    env = {**os.environ, "AWS_ENDPOINT_URL": endpoint_env, "KETCH_STATE_DIR": str(state_dir)}
    result = subprocess.run(
        [*KETCH, "run", reference, "--cache-dir", str(tmp_path / "cache"), "--rm-mount"],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == '{"ok": true}'
    mounts = Path("/proc/mounts").read_text()
    assert str(state_dir) not in mounts  # --rm-mount took the mount down


def test_cli_errors_name_the_bucket(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check", "s3://no-such-bucket-here/images:py1"])
    assert code == NotFoundError.exit_code
    error = capsys.readouterr().err
    assert error.startswith("ketch: error: s3://no-such-bucket-here: no such bucket")
    assert error.count("\n") == 1


# -- what only the S3 store does --------------------------------------------------------


def test_a_missing_bucket_is_a_clear_error(s3_endpoint: str) -> None:
    for create in (False, True):
        with pytest.raises(NotFoundError, match=r"s3://no-such-bucket: no such bucket"):
            S3Store.open("no-such-bucket", "images", create=create, endpoint_url=s3_endpoint)


def test_an_empty_prefix_is_not_a_layout_until_created(s3_bucket: str, s3_endpoint: str) -> None:
    with pytest.raises(NotFoundError, match="not an OCI image layout"):
        S3Store.open(s3_bucket, "images", endpoint_url=s3_endpoint)
    created = S3Store.open(s3_bucket, "images", create=True, endpoint_url=s3_endpoint)
    assert created.tags() == []
    client = s3_client(s3_endpoint)
    layout = client.get_object(Bucket=s3_bucket, Key="images/oci-layout")["Body"].read()
    assert json.loads(layout) == {"imageLayoutVersion": "1.0.0"}
    index = client.get_object(Bucket=s3_bucket, Key="images/index.json")["Body"].read()
    assert json.loads(index) == {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": []}
    S3Store.open(s3_bucket, "images", endpoint_url=s3_endpoint)  # now it opens


def test_open_store_takes_the_endpoint_from_the_environment(
    s3_bucket: str,
    endpoint_env: str,
) -> None:
    store, tag = open_store(f"s3://{s3_bucket}/a/b:v1", create=True)
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix, tag) == (s3_bucket, "a/b", "v1")
    assert store.endpoint == endpoint_env
    assert store.name == f"s3://{s3_bucket}/a/b"
    explicit, _ = open_store(
        f"s3://{s3_bucket}/a/b", StoreOptions(s3=S3Config(endpoint_url=endpoint_env))
    )
    assert explicit.name == store.name


def test_copy_within_a_bucket_is_server_side(s3_bucket: str, s3_endpoint: str) -> None:
    source = S3Store.open(s3_bucket, "one", create=True, endpoint_url=s3_endpoint)
    dest = S3Store.open(s3_bucket, "two", create=True, endpoint_url=s3_endpoint)
    data = os.urandom(100_000)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    source.push_blob_bytes(data, digest)

    def no_streaming(digest: str) -> io.BytesIO:
        raise AssertionError("the blob was streamed through this host")

    source.open_blob = no_streaming  # type: ignore[method-assign]
    dest.copy_blob_from(source, digest)
    assert dest.read_blob(digest) == data


def test_errors_name_bucket_and_key(s3_bucket: str, s3_endpoint: str) -> None:
    store: ImageStore = S3Store.open(s3_bucket, "images", create=True, endpoint_url=s3_endpoint)
    missing = "sha256:" + "0" * 64
    with pytest.raises(NotFoundError) as caught:
        store.read_range(missing, 0, 10)
    assert f"s3://{s3_bucket}/images/blobs/sha256/{'0' * 64}" in caught.value.message
    assert "\n" not in caught.value.message
