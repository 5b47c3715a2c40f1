"""Run the fuzz targets (``targets.py``) under atheris, each in its own process.

    python -m tests.fuzz fuzz [--seconds N] [--workdir DIR] [TARGET...]
    python -m tests.fuzz replay TARGET FILE...
    python -m tests.fuzz run TARGET [LIBFUZZER ARGS...]

``fuzz`` runs each target for ``--seconds`` (all targets by default): the committed seed
corpus (``tests/fuzz/corpus/TARGET``) is replayed first, then atheris mutates it. New
interesting inputs go to ``WORKDIR/TARGET/corpus`` (never into the committed corpus);
a crash, a timeout or an out-of-memory input is written to ``WORKDIR/TARGET/`` and
reported with the command that replays it. ``replay`` runs inputs through a target in
plain Python, for a readable traceback. ``run`` is one atheris process (what ``fuzz``
starts): atheris's ``Setup`` and ``Fuzz`` exit the process.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

FUZZ_DIR = Path(__file__).resolve().parent
REPO = FUZZ_DIR.parents[1]
CORPUS = FUZZ_DIR / "corpus"
TARGET_NAMES = ("bootstrap", "blob", "tar", "layer_stream", "manifest", "config", "prefetch_list")
#: a target that fails on purpose, to test the harness (never part of a fuzz pass)
SELFTEST = "selftest"
#: per-input limits: an input running longer is a hang, one needing more memory a bomb
INPUT_TIMEOUT = 10
RSS_LIMIT_MB = 2048
#: largest input atheris makes (the largest seed is kept whole when larger)
MAX_LEN = 16384
_STAT = re.compile(r"stat::(\w+):\s+(\d+)")
_COVERAGE = re.compile(r"\bcov: (\d+)")
_ARTIFACTS = ("crash-", "timeout-", "oom-", "leak-", "slow-unit-")


@dataclass(frozen=True, slots=True)
class FuzzResult:
    target: str
    returncode: int
    artifacts: list[Path]  # inputs that crashed, hung or ran out of memory
    output: str  # the fuzzer's stderr

    def stats(self) -> str:
        """What the run did, from libFuzzer's last status line and final statistics."""
        found = dict(_STAT.findall(self.output))
        coverage = _COVERAGE.findall(self.output)
        runs = found.get("number_of_executed_units", "?")
        speed = found.get("average_exec_per_sec", "?")
        edges = coverage[-1] if coverage else "?"
        return f"{runs} inputs, {speed}/s, coverage {edges} edges"

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.artifacts

    def report(self) -> str:
        """What failed, the failing inputs and how to replay each."""
        lines = [f"fuzz target {self.target}: exit {self.returncode}"]
        for path in self.artifacts:
            data = path.read_bytes()
            shown = repr(data[:2048]) + (" ..." if len(data) > 2048 else "")
            lines += [
                f"  input {path} ({len(data)} bytes): {shown}",
                f"  replay: PYTHONPATH=src {sys.executable} -m tests.fuzz replay "
                f"{self.target} {path}",
            ]
        lines.append(
            "  to keep it as a regression: copy it into "
            f"tests/fuzz/corpus/{self.target}/ and add a unit test"
        )
        tail = [line[:400] for line in self.output.strip().splitlines()[-40:]]
        return "\n".join([*lines, "  fuzzer output (last lines):", *("    " + t for t in tail)])


def fuzz_target(
    target: str, seconds: int, workdir: Path, *, seeds: Path | None = None
) -> FuzzResult:
    """Replay the seeds of ``target`` (its committed corpus unless given), then fuzz it
    for ``seconds``, in a subprocess."""
    seeds = CORPUS / target if seeds is None else seeds
    out = workdir / target
    corpus = out / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    before = set(out.iterdir())
    command = [
        sys.executable,
        "-m",
        "tests.fuzz",
        "run",
        target,
        str(corpus),  # the first corpus directory gets the new inputs
        str(seeds),
        f"-max_total_time={seconds}",
        f"-timeout={INPUT_TIMEOUT}",
        f"-rss_limit_mb={RSS_LIMIT_MB}",
        f"-max_len={max([MAX_LEN, *(p.stat().st_size for p in seeds.iterdir())])}",
        f"-artifact_prefix={out}/",
        "-print_final_stats=1",
    ]
    env = {**os.environ, "PYTHONPATH": _pythonpath()}
    # A hang the fuzzer misses (one in native code) still ends.
    limit = seconds + 10 * INPUT_TIMEOUT + 60
    try:
        done = subprocess.run(
            command, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=limit
        )
        returncode, output = done.returncode, done.stderr + done.stdout
    except subprocess.TimeoutExpired as exc:
        returncode = -1
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
        output = f"fuzzer did not end in {limit} s\n{stderr}"
    artifacts = sorted(p for p in set(out.iterdir()) - before if p.name.startswith(_ARTIFACTS))
    return FuzzResult(target, returncode, artifacts, output)


def _pythonpath() -> str:
    """Our own sources first, as the shell that runs the tests has them."""
    parts = [str(REPO / "src"), str(REPO)]
    if os.environ.get("PYTHONPATH"):
        parts.append(os.environ["PYTHONPATH"])
    return os.pathsep.join(parts)


def load_target(target: str) -> Callable[[bytes], None]:
    module = importlib.import_module("tests.fuzz.targets")
    function: Callable[[bytes], None] = module.TARGETS[target]
    return function


def _run(target: str, args: list[str]) -> None:
    # Imported here: only the fuzzing process needs it.
    import atheris  # noqa: PLC0415

    with atheris.instrument_imports(include=["ketch"]):
        one_input = load_target(target)
    atheris.Setup([sys.argv[0], *args], one_input)
    atheris.Fuzz()


def _replay(target: str, files: list[Path]) -> int:
    one_input = load_target(target)
    for path in files:
        started = time.monotonic()
        one_input(path.read_bytes())
        print(f"{path}: ok ({time.monotonic() - started:.3f} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["run"] and len(argv) >= 2 and argv[1] in (*TARGET_NAMES, SELFTEST):
        _run(argv[1], argv[2:])  # libFuzzer's arguments are not argparse's
        return 0
    parser = argparse.ArgumentParser(
        prog="python -m tests.fuzz", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    fuzz = commands.add_parser("fuzz", help="fuzz targets, each in its own process")
    fuzz.add_argument("--seconds", type=int, default=60, help="per target (default 60)")
    fuzz.add_argument("--workdir", type=Path, default=REPO / "build" / "fuzz")
    fuzz.add_argument("targets", nargs="*", help=f"default: all of {', '.join(TARGET_NAMES)}")
    replay = commands.add_parser("replay", help="run inputs through a target, no fuzzing")
    replay.add_argument("target", choices=(*TARGET_NAMES, SELFTEST))
    replay.add_argument("files", nargs="+", type=Path)
    run = commands.add_parser("run", help="one atheris process (libFuzzer arguments follow)")
    run.add_argument("target", choices=TARGET_NAMES)
    args = parser.parse_args(argv)
    if args.command == "replay":
        return _replay(args.target, args.files)
    unknown = set(args.targets) - set(TARGET_NAMES)
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}: expected some of {TARGET_NAMES}")
    failed = 0
    for target in args.targets or TARGET_NAMES:
        result = fuzz_target(target, args.seconds, args.workdir)
        print(
            result.report() if not result.ok else f"fuzz target {target}: ok ({result.stats()})",
            flush=True,
        )
        failed += not result.ok
    return 1 if failed else 0
