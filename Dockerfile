# syntax=docker/dockerfile:1
# Spool's image: one image for `spool api` (the default command) and `spool worker`.
#
#   docker build -t spool .
#   docker run -p 8000:8000 -e REDIS_URL=redis://redis-host:6379/0 spool        # an API
#   docker run -e REDIS_URL=redis://redis-host:6379/0 spool worker               # a worker
#   docker run -e REDIS_URL=... spool keys create --name my-app                  # a key
#
# Settings come from the environment (SPOOL_*, REDIS_URL) and from the YAML file that
# SPOOL_CONFIG names (mount it). deploy/README.md runs it with compose and Kubernetes.

ARG PYTHON_VERSION=3.11

# -- build: the project as the tests install it (`pip install -e '.[dev]'`), without the
#    dev extra: a wheel built from pyproject.toml, installed with its dependencies into a
#    virtual environment that the runtime stage copies.
FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY api ./api
COPY worker ./worker
COPY shared ./shared
RUN python -m venv /opt/spool \
 && /opt/spool/bin/pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/spool/bin/pip install /wheels/spool-*.whl

# -- runtime: the virtual environment, a health check, and an unprivileged user.
FROM python:${PYTHON_VERSION}-slim-bookworm
RUN groupadd --system --gid 10001 spool \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/spool --no-create-home \
        --shell /usr/sbin/nologin spool \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/spool /var/lib/spool/artifacts
# /var/lib/spool/artifacts is where compose and the Kubernetes manifests keep task outputs
# (artifacts_dir, shared by API and workers); made here so a new volume mounted on it
# starts owned by the spool user.
COPY --from=build /opt/spool /opt/spool

# The health check. The container's main process is found in /proc/1/cmdline (or the
# process id given as the argument). When it is `spool api`, the check asks that API's
# /healthz, on the port and interface its flags, environment and SPOOL_CONFIG file give
# it. A worker listens on no port, so for `spool worker` (and anything else) the check
# passes while the container runs and says so: the workers' health shows in the API's
# /readyz (ready only while a worker's heartbeat is live). deploy/compose.yaml turns the
# check off for its workers; Kubernetes ignores HEALTHCHECK and uses the probes in
# deploy/k8s/.
COPY --chmod=0755 <<'EOF' /opt/spool/bin/spool-healthcheck
#!/opt/spool/bin/python
"""Docker HEALTHCHECK for Spool: asks `spool api`'s /healthz; a pass for other commands."""

import os
import sys
import urllib.request

from shared.cli import build_parser
from shared.settings import load_settings


def spool_argv(argv: list[str]) -> list[str] | None:
    """The arguments after the `spool` program (or `python -m shared.cli`)."""
    for i, arg in enumerate(argv):
        if os.path.basename(arg) == "spool" or (arg == "shared.cli" and argv[i - 1] == "-m"):
            return argv[i + 1 :]
    return None


def main() -> int:
    pid = sys.argv[1] if len(sys.argv) > 1 else "1"
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = f.read().decode(errors="replace").split("\0")
    rest = spool_argv(argv)
    args = build_parser().parse_known_args(rest)[0] if rest else None
    if args is None or args.command != "api":
        print("not `spool api`: no port to probe (workers show in the API's /readyz)")
        return 0
    settings = load_settings(config=args.config, host=args.host, port=args.port)
    wildcard = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}
    host = wildcard.get(settings.host, settings.host)
    host = f"[{host}]" if ":" in host else host
    url = f"http://{host}:{settings.port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            print(f"{url}: {response.status}")
            return 0 if response.status == 200 else 1
    except OSError as exc:
        print(f"{url}: {exc}")
        return 1


sys.exit(main())
EOF

ENV PATH=/opt/spool/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# data_dir defaults to .spool under the working directory; task outputs go to
# <data_dir>/artifacts unless artifacts_dir says otherwise (API and workers must share it).
WORKDIR /var/lib/spool
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["spool-healthcheck"]
# SIGTERM (Docker's default stop signal): an API ends its streams at an event boundary
# within 5 s (clients resume on another replica); a worker takes no new jobs and finishes
# running ones for up to worker_shutdown_grace_s (30 s) before handing them back. Give it
# a longer stop timeout (`docker stop -t 45`, compose's stop_grace_period).
ENTRYPOINT ["spool"]
CMD ["api", "--host", "0.0.0.0"]
