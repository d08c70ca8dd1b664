"""Proving llama-server on this machine: candidates, the proof file, its validity.

A fake llama-server (the one of test_llama.py) stands for builds that crash or
answer; the installed llama-server is proved for real on the default model.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from meshllm.errors import ServingError
from meshllm.serving import ModelFile
from meshllm.serving import proof as proof_module
from meshllm.serving.proof import (
    NO_REPACK,
    Proof,
    describe_exit,
    load_proof,
    proof_path,
    prove,
    save_proof,
)
from meshllm.testing.cluster import wait_for


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF")
    return path


def test_describe_exit_names_signals() -> None:
    assert describe_exit(-signal.SIGILL) == "SIGILL"
    assert describe_exit(-signal.SIGBUS) == "SIGBUS"
    assert describe_exit(3) == "exit code 3"


def test_a_build_that_works_as_built_is_run_as_built(
    fake_binary: Path, model: Path, tmp_path: Path
) -> None:
    proof = prove(fake_binary, model, log_dir=tmp_path / "logs")
    assert proof.extra_args == ()
    assert [a.ok for a in proof.attempts] == [True]  # stops at the first that works
    assert proof.chosen.tokens_per_s == 40.0 and proof.chosen.prompt_per_s == 90.0


def test_a_build_that_dies_of_sigill_is_run_without_repack(
    fake_binary: Path, model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_LLAMA_SIGNAL", "SIGILL")
    monkeypatch.setenv("FAKE_LLAMA_SPARED_BY", NO_REPACK)
    proof = prove(fake_binary, model, log_dir=tmp_path / "logs")
    assert proof.extra_args == (NO_REPACK,)
    first, second = proof.attempts
    assert (first.ok, first.cause) == (False, "SIGILL")
    assert "fake: dying of SIGILL" in first.log_tail
    assert second.ok and second.extra_args == (NO_REPACK,)


def test_a_build_that_runs_nowhere_says_why(
    fake_binary: Path, model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_LLAMA_SIGNAL", "SIGBUS")
    with pytest.raises(ServingError, match=r"as built: SIGBUS; --no-repack: SIGBUS"):
        prove(fake_binary, model, log_dir=tmp_path / "logs")


def test_every_candidate_can_be_measured(fake_binary: Path, model: Path, tmp_path: Path) -> None:
    proof = prove(fake_binary, model, log_dir=tmp_path / "logs", stop_at_first=False)
    assert [a.extra_args for a in proof.attempts] == [(), (NO_REPACK,)]
    assert proof.extra_args == ()  # the first that works wins


def test_a_proof_holds_only_for_this_machine_and_this_binary(
    fake_binary: Path, model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proof = prove(fake_binary, model, log_dir=tmp_path / "logs")
    save_proof(fake_binary, proof)
    assert proof_path(fake_binary).name == "llama-server.proof.json"
    assert load_proof(fake_binary) == proof

    # A cache shared with another machine (other CPU features): not trusted here.
    monkeypatch.setattr(proof_module, "machine_key", lambda: "another-machine")
    assert load_proof(fake_binary) is None
    monkeypatch.undo()
    assert load_proof(fake_binary) == proof

    # A rebuilt binary: the old proof says nothing about it.
    stat = fake_binary.stat()
    os.utime(fake_binary, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert load_proof(fake_binary) is None

    proof_path(fake_binary).write_text("{not json")
    assert load_proof(fake_binary) is None


def test_proof_round_trips_through_json(fake_binary: Path, model: Path, tmp_path: Path) -> None:
    proof = prove(fake_binary, model, log_dir=tmp_path / "logs")
    assert Proof.from_json(proof.to_json()) == proof


@pytest.mark.e2e
def test_the_installed_llama_server_completes_here(
    llama_server_bin: Path, default_model: ModelFile, tmp_path: Path
) -> None:
    """The real build on this machine: whatever the CPU, one setting completes, and the
    proof left by the installer (scripts/test.sh) names a setting that works."""
    proof = prove(llama_server_bin, default_model.path, log_dir=tmp_path / "logs")
    assert proof.chosen.ok and proof.chosen.tokens_per_s and proof.chosen.tokens_per_s > 0
    for attempt in proof.attempts[:-1]:  # what failed before the chosen one, failed hard
        assert not attempt.ok and attempt.cause
    installed = load_proof(llama_server_bin)
    if os.environ.get("CI"):
        assert installed is not None, "scripts/test.sh proves the build before the tests"
    if installed is not None:
        assert installed.extra_args == proof.extra_args


PROVER = """\
import sys
from pathlib import Path
from meshllm.serving.proof import prove
prove(Path(sys.argv[1]), Path(sys.argv[2]), log_dir=Path(sys.argv[3]), timeout=600)
"""


def test_a_killed_installer_takes_its_proof_server_along(
    fake_binary: Path, model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_LLAMA_LOAD", "100000")  # never healthy: the proof waits
    prover = subprocess.Popen(
        [sys.executable, "-c", PROVER, str(fake_binary), str(model), str(tmp_path / "logs")]
    )
    try:
        child = wait_for(
            lambda: [p for p in psutil.Process(prover.pid).children() if p.is_running()],
            60,
            what="the proof's llama-server",
        )[0]
        prover.kill()
        prover.wait(10)
        wait_for(
            lambda: not child.is_running() or child.status() == psutil.STATUS_ZOMBIE,
            30,
            what="the orphaned proof server to die",
        )
    finally:
        if prover.poll() is None:
            prover.kill()
