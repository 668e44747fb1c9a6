"""A real two-host fleet of one kind (slow, network): the real `./inv` on two simulated hosts (real sshd, their own
users and homes). The first host compiles vLLM 0.2.2 for arch 9.0 (profile pypi-cu13) and pushes the wheel to a
directory cache both users can read; the second installs it from the cache, with the same sha256, and both
verify. The hosts have no nvidia-smi, so the smoke is skipped with its reason (GPU-less hosts, --arch 9.0).

The builder compiles with a copy of the session's compiler cache (real_vllm_wheel), from another workspace root,
another user and an SSH session: compile lines hold workspace-relative paths and the build fixes the locale, yet
most of its compiles still miss that cache (printed, not asserted: the cause is open).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

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


def test_two_hosts_one_build_one_install_from_the_cache(real_vllm_wheel, tmp_path):
    farm = SshFarm()
    try:
        builder, installer = farm.add(None, start_index=40), farm.add(None)
        cache = farm.base / "wheels"
        cache.mkdir()
        ccache = farm.base / "ccache"
        shutil.copytree(real_vllm_wheel["ccache"], ccache)
        for shared in (cache, ccache):                 # every simulated user reads and writes them
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
            "caches": [f"dir:{cache}"], "env": {"CCACHE_DIR": str(ccache), "VLLMP_ENV__PYTHON": "3.11", **site_tls()}},
            run_dir=new_run_dir(tmp_path / "reports"), fleet=settings["fleet"])
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
    finally:
        farm.stop()
