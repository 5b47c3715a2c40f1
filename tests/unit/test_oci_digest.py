"""The one spelling of an OCI content digest: whole bytes and a running sha256 agree
with the known answer, and another hash is refused."""

from __future__ import annotations

import hashlib

import pytest

from ketch.format.digests import oci_digest, sha256_hex

ABC = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_whole_bytes_and_running_hash_agree() -> None:
    running = hashlib.sha256()
    running.update(b"a")
    running.update(b"bc")
    assert oci_digest(running) == sha256_hex(b"abc") == sha256_hex(memoryview(b"abc")) == ABC


def test_another_hash_is_refused() -> None:
    with pytest.raises(ValueError, match="expected a sha256 hash, found sha512"):
        oci_digest(hashlib.sha512())
