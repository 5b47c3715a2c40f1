"""How ``ketch`` behaves towards whoever reads its output."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.fixtures import ocilayout as ol
from tests.integration.ketch_cli import KETCH, ketch


def test_a_reader_that_goes_away_ends_ketch_quietly(tmp_path: Path) -> None:
    # `ketch inspect IMAGE PATH --json | head`: head exits, ketch must stop as a shell
    # tool does on SIGPIPE (exit 141), with nothing on stderr.
    many_chunks = ol.file("big", bytes(3 << 20))  # one chunk per MiB...
    layers = [ol.tar_bytes([many_chunks])]
    ol.write_oci_layout(tmp_path / "src", "t", layers)
    ketch("convert", f"oci:{tmp_path / 'src'}:t", f"oci:{tmp_path / 'k'}:t", "--chunk-size", "4K")
    process = subprocess.Popen(
        [*KETCH, "inspect", f"oci:{tmp_path / 'k'}:t", "/big", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    assert process.stdout.read(100)  # ...of 4 KiB: 768 chunks, far more than a pipe holds
    process.stdout.close()
    error = process.stderr.read()
    process.stderr.close()
    assert process.wait(timeout=60) == 141
    assert error == b""
