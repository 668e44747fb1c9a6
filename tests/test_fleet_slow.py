"""A real two-host fleet of one kind (slow, network): the real `./inv` on two simulated hosts (real sshd, their own
users and homes). The first host compiles vLLM 0.2.2 for arch 9.0 (profile pypi-cu13) and pushes the wheel to a
directory cache both users can read; the second installs it from the cache, with the same sha256, and both
verify. The hosts have no nvidia-smi, so the smoke is skipped with its reason (GPU-less hosts, --arch 9.0).

The builder compiles with a copy of the session's compiler cache (real_vllm_wheel), from another workspace root,
another user and an SSH session: compile lines hold workspace-relative paths, the build fixes the locale and both
build against the same system python3.11, so every compile is served from that cache (no second real compile).
A compile that misses is named with the first inputs that differ from the session's (CCACHE_DEBUG records).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from sshd import SshFarm, sshd_usable

from vllm_provision.core import config
from vllm_provision.fleet import engine
from vllm_provision.fleet.engine import FleetOptions, select_hosts
from vllm_provision.fleet.plays import new_run_dir

pytestmark = [pytest.mark.slow, pytest.mark.network,
              pytest.mark.skipif(bool(sshd_usable()), reason=sshd_usable() or "")]


def site_tls() -> dict[str, str]:
    """The CA bundle this host's own tools use (a site proxy's CA): the simulated hosts' SSH sessions start
    without it, as a real host's would without its site configuration."""
    return {k: os.environ[k] for k in ("SSL_CERT_FILE", "SSL_CERT_DIR", "PIP_CERT", "REQUESTS_CA_BUNDLE")
            if os.environ.get(k)}


def _inputs_by_object(debug_dir: Path) -> dict[str, Path]:
    """CCACHE_DEBUG's input record of each object, by the object's path below the workspace (the newest)."""
    found = {}
    for record in sorted(debug_dir.rglob("*.ccache-input-text")):
        below = str(record).split("/0.2.2-pypi-cu13/", 1)[-1]
        found[below.rsplit(".o.", 1)[0] + ".o"] = record
    return found


def _first_differences(session: Path, builder: Path, most: int = 6) -> list[str]:
    """The first lines that differ in what ccache hashed in preprocessor mode (direct mode also hashes CPATH,
    whose paths are absolute: it differs between workspaces by design, and the preprocessor mode then hits)."""
    def hashed(path: Path) -> list[str]:
        lines = path.read_text(errors="replace").splitlines()
        common_end = lines.index("=== DIRECT MODE ===") if "=== DIRECT MODE ===" in lines else 0
        start = lines.index("=== PREPROCESSOR MODE ===") if "=== PREPROCESSOR MODE ===" in lines else len(lines)
        return lines[:common_end] + lines[start:]
    a, b = hashed(session), hashed(builder)
    out = [f"line {i}: session {x[:200]!r} | builder {y[:200]!r}" for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y]
    if len(a) != len(b):
        out.append(f"{len(a)} lines hashed in the session, {len(b)} in the builder")
    return out[:most]


def ccache_misses_explained(session_debug: Path, builder_debug: Path) -> dict[str, list[str]]:
    """Each builder compile whose hashed inputs differ from the session's compile of the same object."""
    session, builder = _inputs_by_object(session_debug), _inputs_by_object(builder_debug)
    out = {}
    for obj, record in sorted(builder.items()):
        if obj not in session:
            out[obj] = ["the session has no compile of this object"]
        elif differences := _first_differences(session[obj], record):
            out[obj] = differences
    return out


def test_two_hosts_one_build_one_install_from_the_cache(real_vllm_wheel, tmp_path):
    farm = SshFarm()
    try:
        builder, installer = farm.add(None, start_index=40), farm.add(None)
        cache = farm.base / "wheels"
        cache.mkdir()
        ccache = farm.base / "ccache"
        shutil.copytree(real_vllm_wheel["ccache"], ccache)
        ccache_debug = farm.base / "ccache-debug"
        ccache_debug.mkdir()
        for shared in (cache, ccache, ccache_debug):   # every simulated user reads and writes them
            subprocess.run(["chmod", "-R", "a+rwX", str(shared)], check=True)
        hosts_file = tmp_path / "hosts"
        hosts_file.write_text(f"{builder.alias}\n{installer.alias}\n")
        settings_layer = {"build": {"arch_list": ["9.0"]}, "profile": "pypi-cu13", "fleet": {
            "ssh_config": str(farm.ssh_config), "known_hosts": str(farm.known_hosts),
            "report_dir": str(tmp_path / "reports")}}
        settings = config.resolve(settings_layer, environ={})
        hosts = select_hosts(hosts_file=str(hosts_file), ansible_inventory=None, limit=None, rerun_failed=False,
                             root=tmp_path / "reports")
        options = FleetOptions(hosts=hosts, overrides=settings_layer | {
            "caches": [f"dir:{cache}"], "env": {"CCACHE_DIR": str(ccache), "VLLMP_ENV__PYTHON": "3.11", "CCACHE_DEBUG": "1",
                                              "CCACHE_DEBUGDIR": str(ccache_debug), **site_tls()}},
            run_dir=new_run_dir(tmp_path / "reports"), fleet=settings.fleet)
        data = engine.run(options)
        first, second = data["hosts"]
        assert data["ok"] is True, [(h["name"], h["status"], h["detail"]) for h in data["hosts"]]
        assert len(data["kinds"]) == 1 and data["kinds"][0]["built_on"] == builder.alias
        assert "wheel" in first["steps"] and "wheel" not in second["steps"]
        assert first["key"] == second["key"] and first["sha256"] == second["sha256"]
        wheels = sorted(p.name for p in cache.glob("*.whl"))
        assert len(wheels) == 1
        for host in data["hosts"]:
            remote = json.loads((options.run_dir / host["log"] / "remote" / "report.json").read_text())
            assert remote["steps"]["verify"]["status"] == "ok", host["name"]
        second_report = json.loads((options.run_dir / second["log"] / "remote" / "report.json").read_text())
        assert second_report["steps"]["build"]["facts"].get("source") == "cache"
        first_report = json.loads((options.run_dir / first["log"] / "remote" / "report.json").read_text())
        compiled = first_report["steps"]["build"]["facts"]
        assert compiled.get("source") == "compiled"
        # the same key as the session's own build: every field of it follows from the plan and the host
        assert first["key"] == real_vllm_wheel["key"]
        print(json.dumps({"builder_ccache": compiled["ccache"], "builder_build_s": first_report["steps"]["build"]["seconds"],
                          "installer_build_s": second_report["steps"]["build"]["seconds"]}))
        # the builder's compile is the session's, from the compiler cache: every unit a hit
        assert compiled["ccache"]["hits"] >= 15 and compiled["ccache"]["misses"] == 0, (
            compiled["ccache"], ccache_misses_explained(real_vllm_wheel["ccache_debug"], ccache_debug))
    finally:
        farm.stop()
