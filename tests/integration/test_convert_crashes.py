"""kill -9 at random moments of a convert into a layout that already holds a tag.

After every kill the layout stays valid (skopeo and umoci read the old tag, `ketch check`
passes on it) and keeps its old tags; the temporaries the killed converts left are
removed by the next convert; a final convert succeeds. The kill moments come from a seed,
printed (and named in every failure) so that a failing run can be replayed with
KETCH_CRASH_SEED.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import time
from pathlib import Path

from tests.integration.ketch_cli import KETCH, ketch

KILLS = 5
_BLOB = re.compile(r"^[0-9a-f]{64}$")


def _tags(layout: Path) -> dict[str, str]:
    index = json.loads((layout / "index.json").read_text())
    return {
        m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"]
        for m in index["manifests"]
    }


def _temporaries(layout: Path) -> list[Path]:
    """Everything in the layout but its own files and blobs named by their digest."""
    found = [p for p in layout.iterdir() if p.name not in ("oci-layout", "index.json", "blobs")]
    found += [p for p in (layout / "blobs").iterdir() if p.name != "sha256"]
    found += [p for p in (layout / "blobs" / "sha256").iterdir() if not _BLOB.match(p.name)]
    return found


def _layout_is_sound(layout: Path, old: dict[str, str], why: str) -> None:
    assert {tag: _tags(layout)[tag] for tag in old} == old, f"{why}: old tags moved"
    for tool in (
        ["skopeo", "inspect", f"oci:{layout}:old"],
        ["umoci", "stat", "--image", f"{layout}:old"],
        ["umoci", "ls", "--layout", str(layout)],
    ):
        result = subprocess.run(tool, capture_output=True, text=True, check=False)
        assert result.returncode == 0, f"{why}: {' '.join(tool)}: {result.stderr.strip()}"
    check = ketch("check", f"oci:{layout}:old", check=False)
    assert check.returncode == 0, f"{why}: ketch check: {check.stdout}{check.stderr}"


def test_killed_converts_leave_the_layout_sound_and_the_next_run_cleans_up(
    corpus_oci: Path, tmp_path: Path
) -> None:
    seed = int(os.environ.get("KETCH_CRASH_SEED", str(random.SystemRandom().randrange(1 << 32))))
    print(f"KETCH_CRASH_SEED={seed}")
    rng = random.Random(seed)
    layout = tmp_path / "layout"
    started = time.monotonic()
    ketch("convert", f"oci:{corpus_oci}:base", f"oci:{layout}:old")
    span = time.monotonic() - started  # a convert's length on this machine, now
    old = _tags(layout)
    left: list[Path] = []
    for kill in range(KILLS):
        why = f"seed {seed}, kill {kill}"
        process = subprocess.Popen(
            [*KETCH, "convert", f"oci:{corpus_oci}:py2", f"oci:{layout}:new"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.1, span))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        _layout_is_sound(layout, old, why)
        if process.returncode != -signal.SIGKILL:  # it finished first: a tag, no leftovers
            assert _tags(layout)["new"], why
        left += _temporaries(layout)
    ketch("convert", f"oci:{corpus_oci}:py2", f"oci:{layout}:new")
    _layout_is_sound(layout, old, f"seed {seed}, after the final convert")
    assert _temporaries(layout) == [], f"seed {seed}: temporaries left: {left}"
    check = ketch("check", f"oci:{layout}:new", check=False)
    assert check.returncode == 0, f"seed {seed}: {check.stdout}{check.stderr}"
    print(f"{len(left)} temporaries seen after kills, all removed")
