"""The container recipe and the local trial's compose file, checked as code.

There is no Docker engine here: the Dockerfile is linted (hadolint) and its install steps
(build the wheel, install only it into a fresh environment, run it) are run for real.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import venv
from datetime import timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from .conftest import ROOT, corpus
from .pg import fetch

DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "deploy" / "compose.yaml"


def stages(text: str) -> list[list[str]]:
    """Instructions of each build stage (continuation lines joined)."""
    lines = re.sub(r"\\\n\s*", " ", text).splitlines()
    out: list[list[str]] = []
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            out.append([])
        out[-1].append(line)
    return out


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    done = subprocess.run(
        [hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_final_image_is_slim_non_root_and_wheel_only() -> None:
    build, final = stages(DOCKERFILE.read_text())
    assert final[0].startswith("FROM python:3.11-slim")
    text = "\n".join(final)
    assert re.search(r"^USER 10001(:10001)?$", text, re.M)  # numeric: runAsNonRoot can check
    assert "EXPOSE 2525 9102" in text
    assert not re.search(r"apt-get|gcc|build-essential|COPY rua_sink|COPY \. ", text)
    assert any("--from=build" in line for line in final)
    assert any("rua_sink-*.whl" in line for line in final)
    assert 'ENTRYPOINT ["rua-sink"]' in text and 'CMD ["serve"]' in text
    assert any(line.startswith("RUN python -m build --wheel") for line in build)


@pytest.mark.slow
def test_the_images_install_steps_work(tmp_path: Path) -> None:
    # The build stage: a wheel from the sources. The final stage: that wheel alone,
    # installed into a fresh environment, which then runs.
    dist = tmp_path / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    (wheel,) = dist.glob("rua_sink-*.whl")
    env_dir = tmp_path / "image"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-cache-dir", str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert installed.returncode == 0, installed.stderr[-2000:]
    cli = env_dir / "bin" / "rua-sink"
    version = subprocess.run([str(cli), "--version"], capture_output=True, text=True, check=False)
    assert version.stdout.strip() == "rua-sink 0.1.0"
    report = corpus("stalwartlabs__mail-auth/resources/dmarc-feedback/100.eml")
    parsed = subprocess.run(
        [str(cli), "parse", str(report)], capture_output=True, text=True, cwd=tmp_path, check=False
    )
    assert parsed.returncode == 0, parsed.stderr
    assert json.loads(parsed.stdout)["report_id"] == "5264580628977113351"
    # The migrations travel inside the wheel (the image has no source tree).
    listed = subprocess.run(
        [
            str(python),
            "-c",
            "from rua_sink.storage import migrate; print(len(migrate.available()))",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert int(listed.stdout) >= 2
    # So does the mapping of sender identification's services.
    mapped = subprocess.run(
        [
            str(python),
            "-c",
            "from rua_sink.dns.senders import ServiceMap\n"
            "print(ServiceMap.load().lookup('mail.google.com'))",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert mapped.stdout.strip() == "Google Workspace / Gmail", mapped.stderr


def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_compose_file_follows_the_compose_specification() -> None:
    schema_path = Path(sys.prefix) / "compose-spec.json"
    if not schema_path.exists():
        pytest.fail(f"{schema_path} is missing: ./dev fetches it (docker-compose 1.29.2's copy)")
    schema = json.loads(schema_path.read_text())
    validator = jsonschema.Draft201909Validator(schema)
    errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(compose())]
    assert errors == []


def test_compose_prunes_daily(db: str, tmp_path: Path) -> None:
    """The prune service: the server's image, hardening and database, and a loop that runs
    `rua-sink prune` and then sleeps a day. The loop itself is run here by sh, with the
    real command on the PATH and a `sleep` that notes its argument and ends the loop."""
    services = compose()["services"]
    app, prune = services["rua-sink"], services["prune"]
    for key in ("build", "image", "read_only", "tmpfs", "user", "cap_drop", "security_opt"):
        assert prune[key] == app[key], key
    assert (
        prune["environment"]["RUA_SINK_DATABASE_URL"] == app["environment"]["RUA_SINK_DATABASE_URL"]
    )
    assert prune["init"] is True and prune["entrypoint"] == ["/bin/sh", "-c"]
    (script,) = prune["command"]
    script = script.replace("$$", "$")  # compose's escape of a literal $
    assert "rua-sink prune --older-than" in script

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "rua-sink").symlink_to(Path(sys.executable).parent / "rua-sink")
    slept = tmp_path / "slept"
    sleep = bin_dir / "sleep"
    sleep.write_text(f'#!/bin/sh\necho "$1" >> {slept}\nkill -TERM "$PPID"\n')
    sleep.chmod(0o755)
    environment = {k: str(v) for k, v in prune["environment"].items()}
    environment["RUA_SINK_DATABASE_URL"] = db
    done = subprocess.run(
        ["/bin/sh", "-c", script],
        env={**os.environ, **environment, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == -signal.SIGTERM, done.stderr
    assert slept.read_text() == "86400\n"  # a day after a success
    (run,) = fetch(db, "SELECT cutoff, failure_cutoff FROM prune_runs")
    assert run["failure_cutoff"] - run["cutoff"] == timedelta(days=400 - 30)


def test_compose_trial_wiring() -> None:
    services = compose()["services"]
    assert set(services) == {"postgres", "rua-sink", "prune", "prometheus", "grafana"}
    app = services["rua-sink"]
    assert app["read_only"] is True and app["user"].startswith("10001")
    assert app["cap_drop"] == ["ALL"] and "/tmp" in app["tmpfs"]  # noqa: S108 - the container's
    assert "postgres:5432" in app["environment"]["RUA_SINK_DATABASE_URL"]
    for service in ("prometheus", "grafana"):
        for volume in services[service]["volumes"]:
            source = volume.split(":")[0]
            assert (COMPOSE.parent / source).exists(), volume
    grafana_env = services["grafana"]["environment"]
    provisioning = (ROOT / "deploy/grafana/provisioning/datasources/rua-sink.yaml").read_text()
    for variable in set(re.findall(r"\$\{(RUA_SINK_PG_\w+)\}", provisioning)):
        assert variable in grafana_env, variable
    checked = subprocess.run(
        ["promtool", "check", "config", "--syntax-only", "prometheus/prometheus.yml"],
        cwd=COMPOSE.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
