"""The command line as a user runs it: `audiochat serve` with no key, then `say` and `ask` against it."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from audiochat.v1 import audiochat_pb2 as pb
from service import cli, client
from service.audio import parse_wav
from tests.processes import AUDIOCHAT, REPO, ServeProcess, audiochat_serve, offline_environment

# A client process: interpreter start-up alone takes tens of seconds on a loaded 2-core machine.
CLIENT_SECONDS = 120


def run_client(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AUDIOCHAT, *args],
        env=offline_environment(),
        capture_output=True,
        text=True,
        timeout=CLIENT_SECONDS,
        cwd=REPO,
    )


def target_of(serve: ServeProcess) -> str:
    return f"127.0.0.1:{serve.wait_for('gRPC service listening')['port']}"


def speech_of(path: Path) -> np.ndarray:
    data = path.read_bytes()
    info = parse_wav(data)
    assert (info.sample_rate, info.channels, info.bits_per_sample) == (24_000, 1, 16)
    return np.frombuffer(data[info.data_offset : info.data_offset + info.data_length], dtype="<i2")


def test_say_and_ask_against_the_offline_voice(tmp_path: Path) -> None:
    with audiochat_serve() as serve:
        target = target_of(serve)
        serve.wait_for("audiochat ready")

        said = run_client("say", "hello there", "-o", str(tmp_path / "hello.wav"), "--target", target)
        assert said.returncode == 0, said.stderr
        assert "hello there" in said.stdout.lower()
        assert "time to first audio:" in said.stderr
        samples = speech_of(tmp_path / "hello.wav")
        assert len(samples) > 12_000, "longer than half a second"
        assert np.sqrt(np.mean(samples.astype(np.float64) ** 2)) > 300, "real speech, not silence"

        asked = run_client(
            "ask", str(tmp_path / "hello.wav"), "-o", str(tmp_path / "answer.wav"), "--target", target
        )
        assert asked.returncode == 0, asked.stderr
        seconds = len(samples) / 24_000
        assert f"{seconds:.1f} seconds" in asked.stdout
        assert len(speech_of(tmp_path / "answer.wav")) > 12_000

        turn = serve.wait_for("turn stop")
        assert turn["transport"] == "grpc" and turn["audio_samples"] > 12_000
        assert serve.stop() == 0, "SIGTERM drains and exits cleanly"
        serve.wait_for("stopped")


def test_client_reports_nothing_listening_in_one_line() -> None:
    result = run_client("say", "hi", "--target", "127.0.0.1:9")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "audiochat: nothing answers at 127.0.0.1:9 (is `audiochat serve` running?)"
    ]


def test_ask_refuses_a_file_that_is_not_audio(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not audio")
    result = run_client("ask", str(tmp_path / "notes.txt"), "--target", "127.0.0.1:9")
    assert result.returncode == 1
    assert "is not a recording audiochat reads" in result.stderr
    assert "Traceback" not in result.stderr


async def test_a_closed_port_is_reported_without_waiting_for_grpc(monkeypatch: pytest.MonkeyPatch) -> None:
    # gRPC would retry a refused connect with backoff until its timeout; made ten minutes here, the
    # refusal must still come back at once (the 30 s bound only keeps a regression from hanging).
    monkeypatch.setattr(client, "CONNECT_TIMEOUT_SECONDS", 600.0)
    target = f"127.0.0.1:{closed_port()}"
    async with asyncio.timeout(30):
        with pytest.raises(client.ClientError, match=f"nothing answers at {target}"):
            await client.run_turn(target, pb.StreamTurnRequest(), None)


def test_say_against_the_http_edge_says_it_is_not_grpc(tmp_path: Path) -> None:
    with audiochat_serve() as serve:
        http_port = serve.wait_for("audiochat ready")["http_port"]
        result = run_client("say", "hi", "--target", f"127.0.0.1:{http_port}")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"audiochat: 127.0.0.1:{http_port} accepts connections but does not speak gRPC (the HTTP edge? "
        "`say` and `ask` need the gRPC port, 50051 by default)"
    ]


def in_process(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`audiochat ARGS` through the console script's own entry point in this process (no interpreter
    start-up per call), with what it printed."""
    status = cli.main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def test_text_only_say_is_refused_before_the_round_trip_and_ask_text_only_keeps_no_wav(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = in_process(
        capsys, "say", "hi", "--text-only", "-o", str(tmp_path / "a.wav"), "--target", "127.0.0.1:9"
    )
    assert status == 1
    assert "say --text-only sends no audio either way" in err
    assert not (tmp_path / "a.wav").exists()
    with audiochat_serve() as serve:
        target = target_of(serve)
        status, _, err = in_process(
            capsys, "say", "hello there", "-o", str(tmp_path / "q.wav"), "--target", target
        )
        assert status == 0, err
        status, out, err = in_process(
            capsys,
            "ask",
            str(tmp_path / "q.wav"),
            "--text-only",
            "-o",
            str(tmp_path / "a.wav"),
            "--target",
            target,
        )
        assert status == 0, err
        assert "seconds" in out, "the text answer arrived"
        assert not (tmp_path / "a.wav").exists(), "no audio, no file"
        # Without -o the audio is not silently dropped: the user is told how to keep it.
        status, _, err = in_process(capsys, "say", "hello", "--target", target)
        assert status == 0, err
        assert re.search(r"^\d+\.\d\d s of audio not kept \(-o FILE\.wav writes it\)$", err, re.M)


def test_version_and_settings_errors_name_what_to_change(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"audiochat {metadata.version('audiochat')}"
    for name in [name for name in os.environ if name.startswith(("AUDIOCHAT_", "OPENAI_"))]:
        monkeypatch.delenv(name)
    for environment, args, expected in (
        ({"AUDIOCHAT_LOG_LEVEL": "verbose"}, [], "log level (--log-level or AUDIOCHAT_LOG_LEVEL) must be"),
        ({}, ["--log-level", "loud"], "log level (--log-level or AUDIOCHAT_LOG_LEVEL) must be"),
        ({}, ["--upstream", "openai"], "upstream openai (--upstream or AUDIOCHAT_UPSTREAM) needs a key"),
        (
            {"AUDIOCHAT_UPSTREAM": "openai"},
            [],
            "upstream openai (--upstream or AUDIOCHAT_UPSTREAM) needs a key",
        ),
    ):
        with monkeypatch.context() as scoped:
            for name, value in environment.items():
                scoped.setenv(name, value)
            status, _, err = in_process(capsys, "serve", *args)
        assert status == 1
        [line] = err.strip().splitlines()
        assert line.startswith(f"audiochat: {expected}"), line


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
