"""deploy/nginx.conf in a real nginx: it passes `nginx -t` as shipped (with a certificate
made here), and on the load balancer host it redirects HTTP to HTTPS, streams and resumes
exactly through TLS, and logs requests without their query strings."""

from __future__ import annotations

import re
import shutil
import ssl
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest

from tests.faults.conftest import Reading, chat, full_replay, read_some, read_to_the_end
from tests.hosts.conftest import REPO, Deployment, self_signed, tls_cert


def test_the_shipped_config_passes_nginx_t(tmp_path: Path) -> None:
    nginx = shutil.which("nginx")
    if nginx is None:
        pytest.fail("`nginx -t` needs nginx: `apt-get install nginx-light`")
    cert, key = self_signed(tmp_path / "tls", "127.0.0.1")
    site = (REPO / "deploy" / "nginx.conf").read_text()
    # Only what must point into this test's directory changes: the certificate and logs.
    site, certs = re.subn(r"ssl_certificate\s+\S+;", f"ssl_certificate {cert};", site)
    site, keys = re.subn(r"ssl_certificate_key\s+\S+;", f"ssl_certificate_key {key};", site)
    assert (certs, keys) == (1, 1)
    site = site.replace("/var/log/nginx/", f"{tmp_path}/")
    (tmp_path / "spool.conf").write_text(site)
    main = tmp_path / "nginx.conf"
    main.write_text(
        f"""pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    include {tmp_path}/spool.conf;
}}
"""
    )
    done = subprocess.run(
        [nginx, "-t", "-e", str(tmp_path / "error.log"), "-c", str(main)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "test is successful" in done.stderr
    assert "[warn]" not in done.stderr, done.stderr


def test_tls_redirect_resume_and_logs_through_the_load_balancer(healthy: Deployment) -> None:
    d = healthy
    lb = d.hosts["lb"].ip
    # Plain HTTP answers with the same URL on HTTPS, method kept (308).
    plain = httpx.get(f"http://{lb}/v1/streams/x?last_event_id=1-0", timeout=10)
    assert plain.status_code == 308
    assert plain.headers["location"] == f"https://{lb}/v1/streams/x?last_event_id=1-0"

    tls = f"https://{lb}"
    trust = ssl.create_default_context(cafile=str(tls_cert(d.workdir)))
    marker = f"secret-{uuid.uuid4().hex}"
    with httpx.Client(verify=trust, timeout=30) as client:
        # A stream read partway through TLS, dropped, resumed to its end: exact.
        reading = Reading()
        read_some(client, reading, tls, body=chat("quick", "through tls"), stop_after=5)
        assert reading.events and not reading.finished
        assert read_to_the_end(client, reading, [tls])
        assert full_replay(client, tls, reading.stream_id).events == reading.events
        # A query string holding something secret.
        resumed = client.get(
            f"{tls}/v1/streams/{reading.stream_id}",
            params={"last_event_id": reading.events[-2][0], "follow_token": marker},
        )
        assert resumed.status_code < 500, resumed.text

    log = (d.workdir / "nginx" / "spool.access.log").read_text()
    ours = [line for line in log.splitlines() if reading.stream_id in line]
    assert len(ours) >= 3, log[-2000:]  # the resume, the replay, the query
    assert any('"GET /v1/streams/x HTTP/1.1" 308' in line for line in log.splitlines())
    assert marker not in log
    assert not [line for line in ours if "?" in line or "last_event_id" in line]
