"""Prove a llama-server on the machine that runs it (DESIGN.md §9).

A binary that works on one machine may not on the next: a native build of
ggml on an Intel Xeon that reports AMX dies of SIGILL at the first matrix
multiply inside some VMs, although cpuid says AMX is there.  So a build is
called ready only after one real completion here.  :func:`prove` runs
llama-server with each candidate setting in turn (as built, then with
``--no-repack``, which keeps ggml off its repacked and AMX kernels) until one
answers, and records which worked, with its speed, in a proof file beside the
binary.  The proof names the machine it was made on (:func:`machine_key`) and
the binary's size and mtime, so a cache shared between machines is never
trusted blindly: on another machine, or for a rebuilt binary, it does not
count.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from meshllm.errors import ServingError
from meshllm.serving.launch import (
    HOST,
    LlamaOptions,
    die_with_parent,
    free_port,
    llama_argv,
    tail,
)
from meshllm.serving.model_file import ModelFile

NO_REPACK = "--no-repack"
# Tried in order; the first that completes wins.  As built first: repacked
# kernels are the fast path wherever they run.
CANDIDATES: tuple[tuple[str, ...], ...] = ((), (NO_REPACK,))
PROOF_SUFFIX = ".proof.json"
PROOF_PROMPT = "The capital of France is"
PROOF_TOKENS = 32  # enough to time generation, short enough to stay a second or two
PROOF_TIMEOUT = 180.0  # seconds for one candidate to load and answer
CRASH_SIGNALS = (signal.SIGILL, signal.SIGBUS, signal.SIGSEGV, signal.SIGFPE)
"""Signals that say "this build or setting cannot run here", not "try again later"."""


def cpu_flags() -> list[str]:
    """The CPU feature flags the kernel reports (x86 ``flags``, Arm ``Features``)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("flags", "Features"):
                return sorted(set(value.split()))
    return []


def machine_fingerprint() -> dict[str, Any]:
    """What a native build depends on: architecture and CPU features."""
    return {"machine": platform.machine(), "cpu_flags": cpu_flags()}


def digest(data: Any) -> str:
    """A short, stable hash of JSON-able ``data`` (cache and proof keys)."""
    blob = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def machine_key() -> str:
    """This machine's key: equal on machines a native build can move between."""
    return digest(machine_fingerprint())


def describe_exit(returncode: int) -> str:
    """``SIGILL`` for a child killed by a signal, else ``exit code N``."""
    if returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


@dataclass(frozen=True, slots=True)
class Attempt:
    """One candidate setting, run once."""

    extra_args: tuple[str, ...]
    ok: bool
    cause: str = ""  # why it failed: "SIGILL", "exit code 1", "no answer after 180 s"
    tokens_per_s: float | None = None  # generation speed of the proof completion
    prompt_per_s: float | None = None
    load_s: float | None = None  # launch to /health 200
    log_tail: str = ""


@dataclass(frozen=True, slots=True)
class Proof:
    """Which setting of one llama-server binary works on one machine."""

    extra_args: tuple[str, ...]
    machine_key: str
    binary_size: int
    binary_mtime_ns: int
    attempts: tuple[Attempt, ...] = field(default=())
    proved_at: float = 0.0

    @property
    def chosen(self) -> Attempt:
        """The attempt that worked."""
        return next(a for a in self.attempts if a.ok and a.extra_args == self.extra_args)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> Proof:
        data = json.loads(text)
        attempts = tuple(
            Attempt(**{**a, "extra_args": tuple(a["extra_args"])}) for a in data["attempts"]
        )
        return cls(
            extra_args=tuple(data["extra_args"]),
            machine_key=data["machine_key"],
            binary_size=data["binary_size"],
            binary_mtime_ns=data["binary_mtime_ns"],
            attempts=attempts,
            proved_at=data.get("proved_at", 0.0),
        )


def proof_path(binary: Path) -> Path:
    """Where the proof of ``binary`` lives: beside it."""
    return binary.with_name(binary.name + PROOF_SUFFIX)


def load_proof(binary: Path) -> Proof | None:
    """The proof of ``binary`` if one was made on this machine for this very file."""
    try:
        proof = Proof.from_json(proof_path(binary).read_text())
        stat = binary.stat()
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if (proof.machine_key, proof.binary_size, proof.binary_mtime_ns) != (
        machine_key(),
        stat.st_size,
        stat.st_mtime_ns,
    ):
        return None
    return proof


def save_proof(binary: Path, proof: Proof) -> None:
    """Write the proof beside ``binary`` (atomically)."""
    path = proof_path(binary)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(proof.to_json())
    tmp.replace(path)


def prove(
    binary: Path,
    model_path: Path,
    *,
    candidates: tuple[tuple[str, ...], ...] = CANDIDATES,
    log_dir: Path,
    timeout: float = PROOF_TIMEOUT,
    stop_at_first: bool = True,
    prompt: str = PROOF_PROMPT,
    tokens: int = PROOF_TOKENS,
) -> Proof:
    """Run one real completion per candidate; the first that answers is chosen.

    With ``stop_at_first`` false every candidate is run (to compare speeds).
    Raises ServingError, with each candidate's cause, when none answers.
    """
    attempts: list[Attempt] = []
    for extra in candidates:
        attempt = run_once(
            binary, model_path, extra, log_dir=log_dir, timeout=timeout, prompt=prompt,
            tokens=tokens,
        )  # fmt: skip
        attempts.append(attempt)
        if attempt.ok and stop_at_first:
            break
    chosen = next((a for a in attempts if a.ok), None)
    if chosen is None:
        causes = "; ".join(f"{' '.join(a.extra_args) or 'as built'}: {a.cause}" for a in attempts)
        last = attempts[-1].log_tail if attempts else ""
        raise ServingError(
            f"llama-server {binary} cannot complete on this machine ({causes})\n{last}"
        )
    stat = binary.stat()
    return Proof(
        extra_args=chosen.extra_args,
        machine_key=machine_key(),
        binary_size=stat.st_size,
        binary_mtime_ns=stat.st_mtime_ns,
        attempts=tuple(attempts),
        proved_at=time.time(),
    )


def run_once(
    binary: Path,
    model_path: Path,
    extra_args: tuple[str, ...],
    *,
    log_dir: Path,
    timeout: float = PROOF_TIMEOUT,
    prompt: str = PROOF_PROMPT,
    tokens: int = PROOF_TOKENS,
) -> Attempt:
    """Start llama-server with ``extra_args``, ask for one completion, stop it."""
    model = ModelFile(model_path.stem, model_path, model_path.stat().st_size, "")
    port = free_port(None)
    options = LlamaOptions(ctx_size=1024, parallel=1, extra_args=extra_args, max_tokens=None)
    argv = llama_argv(binary, model, port, options)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"proof-{digest(list(extra_args))}.log"
    base = f"http://{HOST}:{port}"
    started = time.monotonic()
    with log_path.open("wb") as logf:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=functools.partial(die_with_parent, os.getpid()),
        )  # fmt: skip
    try:
        deadline = started + timeout
        load_s = None
        while load_s is None:
            if proc.poll() is not None:
                return _failed(extra_args, describe_exit(proc.returncode), log_path)
            if time.monotonic() > deadline:
                return _failed(extra_args, f"not healthy after {timeout:.0f} s", log_path)
            if _get_status(base + "/health") == 200:
                load_s = time.monotonic() - started
            else:
                time.sleep(0.1)
        try:
            answer = _post_json(
                base + "/completion",
                {"prompt": prompt, "n_predict": tokens, "cache_prompt": False},
                timeout=max(1.0, deadline - time.monotonic()),
            )
        except (OSError, ValueError) as exc:
            # A crash mid-answer shows as a broken connection: name the signal.
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(2)
            cause = describe_exit(proc.returncode) if proc.returncode is not None else str(exc)
            return _failed(extra_args, cause, log_path)
        timings = answer.get("timings") or {}
        if not answer.get("content") or not timings.get("predicted_n"):
            return _failed(extra_args, f"empty completion: {answer!r:.200}", log_path)
        return Attempt(
            extra_args,
            ok=True,
            tokens_per_s=round(float(timings.get("predicted_per_second", 0.0)), 1),
            prompt_per_s=round(float(timings.get("prompt_per_second", 0.0)), 1),
            load_s=round(load_s, 2),
        )
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _failed(extra_args: tuple[str, ...], cause: str, log_path: Path) -> Attempt:
    return Attempt(extra_args, ok=False, cause=cause, log_tail=tail(log_path))


def _get_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def _post_json(url: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())
