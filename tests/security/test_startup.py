"""The server's startup as an attacker would probe it: public secrets, plain HTTP.

A `tally serve` that starts on the example registry's secrets (published in
git, including the all-powerful `bank` channel's) or without its own keys is
a server anyone can sign requests for: it must refuse to start unless `--dev`
says it is a development server, and then say so loudly. `--certfile` and
`--keyfile` must serve HTTPS on both servers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.http_helpers import REPO_ROOT, TallyServer, free_port, problem_type, register

START_TIMEOUT_S = 60


def serve(data: Path, *words: str) -> subprocess.CompletedProcess[str]:
    """`tally serve` with `words`, expected to exit on its own (killed after a minute)."""
    command = [sys.executable, "-m", "core", "serve", "--port", str(free_port())]
    command += ["--data", str(data), "--access-log", "off", *words]
    with subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
            pytest.fail(
                f"tally serve {' '.join(words)} kept running (it started): {stderr[-2000:]}"
            )
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def own_secrets_file(directory: Path) -> Path:
    path = directory / "server-secrets.toml"
    path.write_text(
        'transfer_id_key = "' + os.urandom(32).hex() + '"\n'
        'password_pepper = "' + os.urandom(32).hex() + '"\n'
    )
    path.chmod(0o600)
    return path


def test_serve_without_dev_refuses_the_example_secrets(tmp_path: Path) -> None:
    """Without flags, the packaged registry's public secrets (and no server keys): exit 2,
    naming the bank channel and the way out; nothing is bound, no data directory made."""
    done = serve(tmp_path / "data")
    assert done.returncode == 2, done.stderr
    assert "refusing to start with development secrets" in done.stderr
    assert "channel bank" in done.stderr and "--secrets" in done.stderr and "--dev" in done.stderr
    assert not (tmp_path / "data").exists()


def test_a_renamed_copy_of_the_example_registry_is_refused_too(tmp_path: Path) -> None:
    """The check is on the secrets, not the file name: the example registry copied
    elsewhere, with the server's own keys given, still refuses to start."""
    copy = tmp_path / "my-channels.toml"
    shutil.copy(REPO_ROOT / "examples" / "channels.toml", copy)
    done = serve(
        tmp_path / "data", "--channels", str(copy), "--secrets", str(own_secrets_file(tmp_path))
    )
    assert done.returncode == 2, done.stderr
    assert "channel bank" in done.stderr
    assert "no --secrets" not in done.stderr  # the server keys given were accepted


def test_own_secrets_start_and_world_readable_ones_do_not(tmp_path: Path) -> None:
    """A registry with fresh secrets, fresh operator keys and a 0600 secrets file starts
    without --dev (and serves); the example operators' public keys are refused, and so is
    the same secrets file readable by others."""
    text = (REPO_ROOT / "examples" / "channels.toml").read_text()
    for line in text.splitlines():
        if line.startswith("secret = "):
            text = text.replace(line, f'secret = "{os.urandom(32).hex()}"', 1)
    channels = tmp_path / "channels.toml"
    channels.write_text(text)
    # The example operators' keys are public too (DEVELOPMENT-ONLY): fresh ones here.
    operators_text = (REPO_ROOT / "examples" / "operators.toml").read_text()
    for line in operators_text.splitlines():
        if line.startswith("secret = "):
            operators_text = operators_text.replace(line, f'secret = "{os.urandom(32).hex()}"', 1)
    operators = tmp_path / "operators.toml"
    operators.write_text(operators_text)
    secrets_file = own_secrets_file(tmp_path)
    done = serve(tmp_path / "data", "--channels", str(channels), "--secrets", str(secrets_file))
    assert done.returncode == 2 and "operator risk1" in done.stderr, done.stderr
    secrets_file.chmod(0o644)
    done = serve(tmp_path / "data", "--channels", str(channels), "--secrets", str(secrets_file))
    assert done.returncode == 2 and "chmod 600" in done.stderr, done.stderr
    secrets_file.chmod(0o600)
    server = TallyServer(
        tmp_path / "data",
        channels_file=channels,
        extra=["--secrets", str(secrets_file), "--operators", str(operators)],
        dev=False,
    )
    server.start()
    try:
        assert "DEVELOPMENT SERVER" not in server.log()
        with server.client("counter") as counter:
            register(counter)
    finally:
        server.stop()


def test_dev_starts_with_a_loud_warning(tmp_path: Path) -> None:
    """`--dev` (what `make run` and every test server pass) starts on the example
    registry, and the log says it is a development server and why."""
    server = TallyServer(tmp_path / "data").start()
    try:
        log = server.log()
        assert "DEVELOPMENT SERVER" in log and "channel bank" in log, log
        assert httpx.get(server.url + "/readyz").status_code == 200
    finally:
        server.stop()


# --- TLS ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (openssl; `cryptography` is not installed)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    directory = tmp_path_factory.mktemp("tls")
    certfile, keyfile = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(keyfile), "-out", str(certfile)],
        check=True, capture_output=True,
    )  # fmt: skip
    return certfile, keyfile


@pytest.fixture(params=["hypercorn", "uvicorn"])
def tls_server(
    request: pytest.FixtureRequest, tmp_path: Path, certificate: tuple[Path, Path]
) -> Iterator[TallyServer]:
    server = TallyServer(tmp_path / "data", server=request.param, tls=certificate).start()
    yield server
    server.stop()


def test_https_on_both_servers(tls_server: TallyServer) -> None:
    """With --certfile/--keyfile the API is HTTPS: the certificate verifies, a signed
    request is served, and plain HTTP on the same port gets no API answer."""
    assert tls_server.url.startswith("https://")
    with tls_server.client("counter") as counter:
        customer = register(counter)
        assert customer["customer_id"]
        refused = counter.get("/v1/customers/c00000000000000000000")
        assert refused.status_code == 404 and problem_type(refused) == "customer-not-found"
    plain = tls_server.url.replace("https://", "http://")
    try:
        answer = httpx.get(plain + "/readyz", timeout=5)
    except httpx.HTTPError:
        pass  # the connection is closed on a plain HTTP request
    else:
        assert answer.status_code != 200, answer.text  # or answered with an error


def test_certfile_without_keyfile_is_refused(
    tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    """Half a TLS configuration is a mistake, not a silent plain-HTTP server."""
    done = serve(tmp_path / "data", "--dev", "--certfile", str(certificate[0]))
    assert done.returncode == 2 and "--keyfile" in done.stderr, done.stderr
