"""Fleet runs against real OpenSSH sshd daemons on 127.0.0.11, .12, ... (tests/sshd.py), through the real
ansible-playbook and the toolkit's playbook: facts, kinds, host keys, timeouts, the fork cap, batches and the
failure budget, ProxyJump, --rerun-failed and the report.

The GPU queries are the only fake (an nvidia-smi stand-in replaying H200 / A100 recordings). The install
phase runs tests/fixtures/fleet/inv-standin (SshFarm.standin) as the toolkit command: it speaks the `./inv wheel` /
`./inv provision --require-cache` contract without compiling; tests/test_fleet_slow.py runs the real one.
"""

from __future__ import annotations

import json
import re
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import pytest
from sshd import SshFarm, sshd_usable

from vllm_provision.core import config, outputs
from vllm_provision.core.errors import ConfigError
from vllm_provision.fleet import engine
from vllm_provision.fleet import report as fleet_report
from vllm_provision.fleet.engine import FleetOptions, select_hosts
from vllm_provision.fleet.inventory import read_hosts_file
from vllm_provision.fleet.plays import new_run_dir
from vllm_provision.fleet.report import HostStatus

SCHEMAS = Path(__file__).resolve().parent.parent / "vllm_provision" / "schemas"

pytestmark = pytest.mark.skipif(bool(sshd_usable()), reason=sshd_usable() or "")


@pytest.fixture(scope="module")
def farm():
    """Five hosts of two kinds: sim1, sim2, sim5 with 2x H200 (9.0); sim3, sim4 with 2x A100-80GB (8.0)."""
    farm = SshFarm()
    try:
        for gpu in ("h200", "h200", "a100", "a100", "h200"):
            farm.add(gpu)
        yield farm
    finally:
        farm.stop()


@pytest.fixture
def fresh(farm):
    """Every host replays its recording again after the test."""
    yield farm
    for host in farm.hosts:
        host.behave(None)
        (host.home / ".toolkit-behaviour").unlink(missing_ok=True)


def layer(farm: SshFarm, reports: Path, **fleet) -> dict:
    values = {"ssh_config": str(farm.ssh_config), "known_hosts": str(farm.known_hosts), "connect_timeout": 5,
              "facts_timeout": 60, "report_dir": str(reports), "remote_dir": "vllm-provision",
              "toolkit_command": str(farm.standin)} | fleet
    return {"fleet": values}


def fleet_run(farm: SshFarm, tmp_path: Path, names: list[str], *, facts_only: bool = True, rerun_failed=False,
              cache: Path | None = None, ansible_inventory: Path | None = None, **fleet) -> dict:
    tmp_path.mkdir(parents=True, exist_ok=True)
    hosts_file = tmp_path / "hosts"
    hosts_file.write_text("# simulated fleet\n" + "\n".join(names) + "\n")
    root = tmp_path / "reports"
    settings_layer = layer(farm, root, **fleet)
    settings = config.resolve(settings_layer, environ={})
    hosts = select_hosts(hosts_file=None if ansible_inventory else str(hosts_file),
                         ansible_inventory=str(ansible_inventory) if ansible_inventory else None, limit=None,
                         rerun_failed=rerun_failed, root=root)
    events: list[str] = []
    options = FleetOptions(hosts=hosts, overrides=settings_layer | {"caches": [f"dir:{cache}"] if cache else []},
                           run_dir=new_run_dir(root), fleet=settings.fleet, facts_only=facts_only,
                           ansible_inventory=ansible_inventory, echo=events.append)
    data = engine.run(options)
    data["events"] = events
    data["run_dir"] = options.run_dir
    return data


def by_name(data: dict) -> dict[str, dict]:
    return {h["name"]: h for h in data["hosts"]}


def test_facts_group_a_mixed_inventory_into_two_kinds(farm, tmp_path):
    data = fleet_run(farm, tmp_path, ["sim1", "sim2", "sim3", "sim4", "sim5"])
    hosts = by_name(data)
    assert [h["status"] for h in data["hosts"]] == ["ok"] * 5
    assert len(data["kinds"]) == 2
    h200, a100 = data["kinds"]
    assert h200["hosts"] == ["sim1", "sim2", "sim5"] and a100["hosts"] == ["sim3", "sim4"]
    assert h200["fields"]["archs"] == ["9.0"] and a100["fields"]["archs"] == ["8.0"]
    assert "2x NVIDIA H200" in h200["label"] and "2x NVIDIA A100-SXM4-80GB" in a100["label"]
    assert h200["fields"]["release"] == "0.2.2" and h200["fields"]["python"] in ("3.10", "3.11", "3.12")
    assert h200["fields"]["glibc"] and h200["fields"]["platform"].startswith("linux")
    assert hosts["sim1"]["kind"] == hosts["sim5"]["kind"] == h200["id"] != hosts["sim3"]["kind"]
    assert hosts["sim3"]["facts"]["gpus"][0]["compute_cap"] == "8.0"
    assert data["ok"] is True


def test_unreachable_failing_and_refused_hosts(fresh, tmp_path):
    farm = fresh
    farm.hosts[1].behave("exit 3")
    stranger = farm.add("h200", known=False)            # its key is not in known_hosts
    data = fleet_run(farm, tmp_path, ["sim1", "sim2", "sim_99@127.0.0.99", stranger.alias])
    hosts = by_name(data)
    assert hosts["sim1"]["status"] == "ok"
    assert hosts["sim2"]["status"] == "failed" and hosts["sim2"]["exit_code"] == 3
    assert "nvidia-smi failed with exit code 3" in hosts["sim2"]["detail"]
    assert hosts["sim_99@127.0.0.99"]["status"] == "unreachable"
    assert hosts[stranger.alias]["status"] == "refused"
    assert "not in" in hosts[stranger.alias]["detail"] and "ssh-keyscan" in hosts[stranger.alias]["hint"]
    assert "accept-new" in hosts[stranger.alias]["hint"]
    assert data["ok"] is False and data["counts"]["unreachable"] == 1 and data["counts"]["refused"] == 1


def test_a_hung_host_times_out_and_leaves_no_process(fresh, tmp_path):
    host = fresh.hosts[0]
    host.behave("hang")
    data = fleet_run(fresh, tmp_path, ["sim1", "sim3"], facts_timeout=2)
    hosts = by_name(data)
    assert hosts["sim1"]["status"] == "timed out" and hosts["sim1"]["phase"] == "facts"
    assert hosts["sim3"]["status"] == "ok"
    for _ in range(100):            # the session's sshd child exits just after the channel closes
        if not host.processes():
            break
        time.sleep(0.1)
    assert host.processes() == []


def test_changed_host_key_is_refused_even_with_accept_new(tmp_path):
    farm = SshFarm()
    try:
        host = farm.add("a100", start_index=20)
        assert by_name(fleet_run(farm, tmp_path / "a", [host.alias]))[host.alias]["status"] == "ok"
        farm.replace_host_key(host)
        for policy in ("strict", "accept-new"):
            result = by_name(fleet_run(farm, tmp_path / policy, [host.alias], host_key_policy=policy))[host.alias]
            assert result["status"] == "refused", policy
            assert "changed" in result["detail"] and "ssh-keygen -R" in result["hint"]
    finally:
        farm.stop()


def test_accept_new_learns_a_key_that_strict_then_accepts(tmp_path):
    farm = SshFarm()
    try:
        host = farm.add("h200", start_index=25, known=False)
        assert by_name(fleet_run(farm, tmp_path / "strict", [host.alias]))[host.alias]["status"] == "refused"
        learned = by_name(fleet_run(farm, tmp_path / "new", [host.alias], host_key_policy="accept-new"))
        assert learned[host.alias]["status"] == "ok"
        line = host.known_hosts_line().split()
        assert any(l.split()[:3] == line for l in farm.known_hosts.read_text().splitlines())
        assert by_name(fleet_run(farm, tmp_path / "again", [host.alias]))[host.alias]["status"] == "ok"
    finally:
        farm.stop()


def test_sixty_entries_to_one_sshd_all_pass_under_the_fork_cap(farm, tmp_path):
    host = farm.hosts[2]
    config_text = farm.ssh_config.read_text()
    try:
        with farm.ssh_config.open("a") as fh:
            for n in range(60):
                fh.write(f"Host burst{n}\n  HostName {host.address}\n  User {host.user}\n"
                         f"  IdentityFile {farm.client_key}\n\n")
        data = fleet_run(farm, tmp_path, [f"burst{n}" for n in range(60)], forks=8)
    finally:
        farm.ssh_config.write_text(config_text)
    assert data["counts"]["ok"] == 60, [h["detail"] for h in data["hosts"] if h["status"] != "ok"]
    assert len(data["kinds"]) == 1 and len(data["kinds"][0]["hosts"]) == 60
    assert data["policy"]["forks"] == 8


def test_proxyjump_through_one_sim_host_to_another(farm, tmp_path):
    hop, target = farm.hosts[0], farm.hosts[3]
    config_text = farm.ssh_config.read_text()
    try:
        with farm.ssh_config.open("a") as fh:
            fh.write(f"Host behind\n  HostName {target.address}\n  User {target.user}\n"
                     f"  IdentityFile {farm.client_key}\n  ProxyJump {hop.alias}\n\n")
        data = fleet_run(farm, tmp_path, ["behind"])
    finally:
        farm.ssh_config.write_text(config_text)
    result = by_name(data)["behind"]
    assert result["status"] == "ok", result
    assert result["facts"]["gpus"][0]["compute_cap"] == "8.0"
    # the hop's sshd forwarded the connection (its log names the target)
    assert f"target {target.address} port 22" in hop.log.read_text() or \
           f"to {target.address} port 22" in hop.log.read_text()


def test_rerun_failed_runs_only_the_hosts_that_failed(fresh, tmp_path):
    fresh.hosts[1].behave("exit 3")
    first = fleet_run(fresh, tmp_path, ["sim1", "sim2", "sim3"])
    assert [h["status"] for h in first["hosts"]] == ["ok", "failed", "ok"]
    fresh.hosts[1].behave(None)
    again = fleet_run(fresh, tmp_path, ["sim1", "sim2", "sim3"], rerun_failed=True)
    assert [(h["name"], h["status"]) for h in again["hosts"]] == [("sim2", "ok")]
    assert fleet_report.failed_hosts(tmp_path / "reports") == []
    assert (tmp_path / "reports" / "latest").resolve() == again["run_dir"].resolve()


def test_one_build_per_kind_canary_batches_and_the_failure_budget(fresh, tmp_path):
    farm = fresh
    cache = farm.base / "wheel-cache"
    cache.mkdir(mode=0o777, exist_ok=True)
    cache.chmod(0o1777)
    (farm.hosts[1].home / ".toolkit-behaviour").write_text("exit 3\n")     # sim2: the install fails
    # canaries sim1 (H200) and sim3 (A100); then batches of one: sim4 passes, sim2 fails, and with a budget
    # of 0 % Ansible ends the play there: sim5 is skipped
    data = fleet_run(farm, tmp_path, ["sim1", "sim3", "sim4", "sim2", "sim5"], facts_only=False, cache=cache,
                     forks=1, max_fail_percent=0)
    hosts = by_name(data)
    builds = (cache / "builds.log").read_text().splitlines()
    assert sorted(line.split()[:2] for line in builds) == [["sim_1", "9.0"], ["sim_3", "8.0"]]
    h200, a100 = data["kinds"]
    assert h200["built_on"] == "sim1" and a100["built_on"] == "sim3"
    assert hosts["sim1"]["role"] == "canary" and hosts["sim1"]["status"] == "ok"
    assert hosts["sim1"]["steps"][:4] == ["facts", "upload", "wheel", "install"]
    assert hosts["sim2"]["status"] == "failed" and hosts["sim2"]["exit_code"] == 3
    assert "illegal memory access" in hosts["sim2"]["detail"] and "smoke.log" in hosts["sim2"]["hint"]
    assert hosts["sim5"]["status"] == "skipped" and "failure budget spent: 1 of 2" in hosts["sim5"]["detail"]
    assert hosts["sim4"]["role"] == "batch 1" and hosts["sim2"]["role"] == "batch 2"
    # the other kind's second host installs its canary's wheel (same key, same sha256), builds nothing
    assert hosts["sim4"]["status"] == "ok" and "wheel" not in hosts["sim4"]["steps"]
    assert hosts["sim4"]["key"] == hosts["sim3"]["key"] == a100["key"]
    assert hosts["sim4"]["sha256"] == hosts["sim3"]["sha256"] and len(a100["sha256"]) == 64
    assert hosts["sim4"]["gpu_blocks"] == 2 * 132349 and hosts["sim4"]["smoke"] == "pass"
    assert data["ok"] is False
    check_report_files(data)

    # a second run builds nothing: both kinds have a key in the cache
    (farm.hosts[1].home / ".toolkit-behaviour").unlink()
    again = fleet_run(farm, tmp_path, ["sim1", "sim2", "sim5", "sim3", "sim4"], facts_only=False, cache=cache,
                      forks=4)
    assert len((cache / "builds.log").read_text().splitlines()) == 2
    assert [h["status"] for h in again["hosts"]] == ["ok"] * 5 and again["ok"] is True


def check_report_files(data: dict) -> None:
    run_dir = data["run_dir"]
    written = json.loads((run_dir / "fleet-report.json").read_text())
    jsonschema.validate(written, json.loads((SCHEMAS / "fleet.schema.json").read_text()))
    assert written["schema_version"] == outputs.SCHEMA_VERSION and written["kind"] == "fleet"
    assert {"started", "seconds", "release", "profile", "policy", "host_key_policy", "kinds", "hosts", "counts",
            "ok"} <= written.keys()
    assert written["counts"] == {"ok": 3, "failed": 1, "unreachable": 0, "timed out": 0, "refused": 0, "skipped": 1}
    row = {h["name"]: h for h in written["hosts"]}["sim4"]
    assert {"kind", "key", "steps", "status", "seconds", "gpu_blocks", "smoke", "log", "exit_code"} <= row.keys()
    # per-host logs fetched back: the remote report and logs, and the toolkit's output
    assert (run_dir / row["log"] / "remote" / "report.json").is_file()
    assert (run_dir / row["log"] / "remote" / "logs" / "smoke.log").is_file()
    assert (run_dir / row["log"] / "install.log").is_file()
    md = (run_dir / "fleet-report.md").read_text()
    header = "| host | kind | key | steps reached | status | time | GPU blocks | smoke | log |"
    assert header in md
    sim2 = next(line for line in md.splitlines() if line.startswith("| sim2 |"))
    assert "failed (exit 3)" in sim2
    sim4 = next(line for line in md.splitlines() if line.startswith("| sim4 |"))
    assert "| ok |" in sim4 and "264698" in sim4 and "| pass |" in sim4 and "facts > upload > install" in sim4
    suite = ET.parse(run_dir / "junit.xml").getroot().find("testsuite")
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert set(cases) == {"sim1", "sim2", "sim5", "sim3", "sim4"}
    # the host's own report.json came back as JSON, from where the host's toolkit said its workspace is
    assert json.loads((run_dir / row["log"] / "remote" / "report.json").read_text())["artifact_key"] == row["key"]
    assert suite.get("failures") == "1" and suite.get("skipped") == "1"
    assert cases["sim2"].find("failure") is not None and cases["sim5"].find("skipped") is not None
    assert cases["sim4"].find("failure") is None


def test_inventory_file_groups_comments_and_bad_input(tmp_path):
    from vllm_provision.core.errors import ConfigError
    from vllm_provision.fleet.inventory import limit

    path = tmp_path / "hosts"
    path.write_text("# rack 1\n[h200]\ngpu-a  # first\nops@10.0.0.2:2222\n\n[a100]\ngpu-c\n")
    hosts = read_hosts_file(path)
    assert [(h.name, h.hostname, h.user, h.port, h.groups) for h in hosts] == [
        ("gpu-a", "gpu-a", None, None, ("h200",)), ("ops@10.0.0.2:2222", "10.0.0.2", "ops", 2222, ("h200",)),
        ("gpu-c", "gpu-c", None, None, ("a100",))]
    assert [h.name for h in limit(hosts, "a100,gpu-a")] == ["gpu-a", "gpu-c"]
    assert [h.name for h in limit(hosts, "ops@*")] == ["ops@10.0.0.2:2222"]
    for text, message in [("", "lists no hosts"), ("# only\n", "lists no hosts"), ("a\nb\na\n", "lists a twice"),
                          ("root@host:99999\n", "is not a host"), ("two words\n", "is not a host")]:
        path.write_text(text)
        with pytest.raises(ConfigError, match=message) as err:
            read_hosts_file(path)
        assert err.value.hint and err.value.exit_code == 2
    with pytest.raises(ConfigError, match="matches no host"):
        limit(hosts, "nothing*")


def test_an_ansible_inventory_is_read_through_the_real_ansible_inventory(tmp_path):
    from vllm_provision.core.errors import ConfigError
    from vllm_provision.fleet.inventory import read_ansible_inventory

    path = tmp_path / "inventory.ini"
    path.write_text("[h200]\ngpu-a ansible_host=10.0.0.1 ansible_user=ops ansible_port=2222\ngpu-b\n\n"
                    "[a100]\ngpu-c ansible_host=10.0.0.3\n\n[gpus:children]\nh200\na100\n")
    hosts = read_ansible_inventory(path)
    assert [(h.name, h.hostname, h.user, h.port) for h in hosts] == [
        ("gpu-a", "10.0.0.1", "ops", 2222), ("gpu-b", "gpu-b", None, None), ("gpu-c", "10.0.0.3", None, None)]
    assert "h200" in hosts[0].groups and "a100" in hosts[2].groups
    path.write_text("[h200]\ngpu-a ansible_port=notaport\n")
    with pytest.raises(ConfigError) as err:
        read_ansible_inventory(path)
    assert err.value.hint and err.value.exit_code == 2


def test_the_fleet_task_exit_codes_progress_and_refusals(fresh, tmp_path):
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    reports = tmp_path / "reports"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("VLLMP_")} | {
        "VLLMP_FLEET__SSH_CONFIG": str(fresh.ssh_config), "VLLMP_FLEET__KNOWN_HOSTS": str(fresh.known_hosts),
        "VLLMP_FLEET__REPORT_DIR": str(reports), "VLLMP_FLEET__CONNECT_TIMEOUT": "5", "CI": "1"}
    hosts = tmp_path / "hosts"
    hosts.write_text("[h200]\nsim1\nsim2\n[a100]\nsim3\n")

    def fleet(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "invoke", "fleet", "--hosts", str(hosts), *args], cwd=root,
                              env=environ, capture_output=True, text=True, timeout=300)

    done = fleet("--facts-only")
    assert done.returncode == 0, done.stderr
    assert "[fleet] sim3 facts ok" in done.stderr and "report:" in done.stderr
    fresh.hosts[1].behave("exit 3")
    done = fleet("--facts-only", "--limit", "h200")
    assert done.returncode == 1
    assert "error: 1 of 2 hosts did not pass: sim2 failed" in done.stderr and "--rerun-failed" in done.stderr
    assert "Traceback" not in done.stderr
    runs = sorted(p.name for p in reports.iterdir())
    done = fleet("--cache", "pypi:https://ci:s3cretvalue@nexus.corp/simple")
    assert done.returncode == 2 and "s3cretvalue" not in done.stderr + done.stdout
    assert done.stderr.count("error:") == 1 and "hint:" in done.stderr
    assert sorted(p.name for p in reports.iterdir()) == runs          # nothing half-made


def test_a_hung_install_times_out_and_leaves_no_toolkit_process(fresh, tmp_path):
    host = fresh.hosts[2]                                   # sim3: its kind's canary
    cache = fresh.base / "cache-hung"
    cache.mkdir(mode=0o777)
    cache.chmod(0o1777)
    (host.home / ".toolkit-behaviour").write_text("hang\n")
    result = by_name(fleet_run(fresh, tmp_path, ["sim3"], facts_only=False, cache=cache, install_timeout=3))["sim3"]
    assert result["status"] == "timed out" and result["phase"] == "install", result
    assert "stopped" in result["detail"] and "install_timeout" in result["hint"]
    assert host.processes() == []                           # the module ended the toolkit's process group


def test_ctrl_c_at_the_controller_ends_the_toolkit_on_the_host(fresh, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    host = fresh.hosts[2]
    cache = fresh.base / "cache-interrupted"
    cache.mkdir(mode=0o777)
    cache.chmod(0o1777)
    (host.home / ".toolkit-behaviour").write_text("hang\n")
    hosts = tmp_path / "hosts"
    hosts.write_text("sim3\n")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("VLLMP_")} | {
        "VLLMP_FLEET__SSH_CONFIG": str(fresh.ssh_config), "VLLMP_FLEET__KNOWN_HOSTS": str(fresh.known_hosts),
        "VLLMP_FLEET__REPORT_DIR": str(tmp_path / "reports"), "VLLMP_FLEET__TOOLKIT_COMMAND": str(fresh.standin), "CI": "1"}
    root = Path(__file__).resolve().parent.parent
    fleet = subprocess.Popen([sys.executable, "-m", "invoke", "fleet", "--hosts", str(hosts), "--cache", f"dir:{cache}"],
                             cwd=root, env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not any("provision" in line for line in host.processes()):
            assert time.monotonic() < deadline and fleet.poll() is None, "the install never started"
            time.sleep(0.2)
        os.killpg(fleet.pid, signal.SIGINT)                 # Ctrl-C in the terminal: the foreground group
        _, stderr = fleet.communicate(timeout=60)
    finally:
        if fleet.poll() is None:
            os.killpg(fleet.pid, signal.SIGKILL)
    assert fleet.returncode == 130 and "interrupted" in stderr
    stopped = time.monotonic()
    while host.processes() and time.monotonic() - stopped < 30:
        time.sleep(0.1)
    assert host.processes() == []


def test_plain_ansible_playbook_gives_the_same_results_and_report(fresh, tmp_path):
    """An operator's own inventory (groups, ansible_user, a key): `./inv fleet --ansible-inventory` and plain
    ansible-playbook with the operator's ssh options (no ./inv) give the same per-host results and reports."""
    import os
    import subprocess
    import sys

    from vllm_provision.fleet.ansible import PLAYBOOK

    farm = fresh
    cache = farm.base / "cache-plain"
    cache.mkdir(mode=0o777)
    cache.chmod(0o1777)
    h200, a100 = farm.hosts[1], farm.hosts[2]
    inventory = tmp_path / "inventory.ini"
    inventory.write_text(f"[h200]\n{h200.alias} ansible_host={h200.address} ansible_user={h200.user}\n"
                         f"[a100]\n{a100.alias} ansible_host={a100.address} ansible_user={a100.user}\n"
                         f"[all:vars]\nansible_ssh_private_key_file={farm.client_key}\n")
    by_inv = fleet_run(farm, tmp_path / "inv", [], facts_only=False, cache=cache, ansible_inventory=inventory)
    reports = tmp_path / "plain" / "reports"
    overrides = layer(farm, reports) | {"caches": [f"dir:{cache}"]}
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("VLLMP_", "ANSIBLE_"))} | {
        "ANSIBLE_PIPELINING": "True", "ANSIBLE_PYTHON_INTERPRETER": "python3",
        "ANSIBLE_SSH_ARGS": f"-o UserKnownHostsFile={farm.known_hosts} -o StrictHostKeyChecking=yes"}
    done = subprocess.run([str(Path(sys.executable).with_name("ansible-playbook")), "-i", str(inventory),
                           "-e", json.dumps({"vllmp_overrides": overrides}), str(PLAYBOOK)],
                          env=environ, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:]
    plain = json.loads((reports / "latest" / "fleet-report.json").read_text())

    def rows(data):
        return {h["name"]: (h["status"], h["kind"], h["key"], h["sha256"], h["gpu_blocks"], h["smoke"])
                for h in data["hosts"]}
    assert rows(plain) == rows(by_inv) and all(r[0] == "ok" for r in rows(plain).values())
    assert [k["id"] for k in plain["kinds"]] == [k["id"] for k in by_inv["kinds"]]
    for name in ("fleet-report.md", "junit.xml"):
        assert (reports / "latest" / name).is_file()
    assert (reports / "latest" / "hosts" / "sim2" / "remote" / "report.json").is_file()
    assert sorted(rows(plain)) == ["sim2", "sim3"] and len(plain["kinds"]) == 2


def test_without_the_fleet_extra_the_error_names_it():
    from vllm_provision.core.errors import ConfigError
    from vllm_provision.fleet.inventory import ansible_tool

    assert Path(ansible_tool("ansible-playbook")).name == "ansible-playbook"     # the test extra carries it
    with pytest.raises(ConfigError, match="need Ansible") as err:
        ansible_tool("ansible-playbook-not-installed")
    assert "VLLMP_EXTRAS=fleet" in err.value.hint and err.value.exit_code == 2


def test_rerun_failed_reads_only_a_current_fleet_report(tmp_path):
    root = tmp_path / "reports"
    run_dir = root / "20261204-000000"
    results = [fleet_report.HostResult("gpu-a", status=HostStatus.OK),
               fleet_report.HostResult("gpu-b", status=HostStatus.FAILED)]
    data = {"started": "2026-12-04T00:00:00Z", "seconds": 1.0, "release": "0.2.2", "profile": "pypi-cu13",
            "facts_only": True, "policy": {"forks": 4, "max_fail_percent": 0.0}, "host_key_policy": "strict",
            "caches": [], "kinds": []}
    written = fleet_report.write(run_dir, data, results)
    jsonschema.validate(written, json.loads((SCHEMAS / "fleet.schema.json").read_text()))
    assert fleet_report.failed_hosts(root) == ["gpu-b"]
    # a report from before fleet reports were versioned (or from another toolkit) is refused, not misread
    unversioned = {k: v for k, v in written.items() if k not in ("schema_version", "kind")}
    (run_dir / "fleet-report.json").write_text(json.dumps(unversioned))
    with pytest.raises(ConfigError) as refused:
        fleet_report.failed_hosts(root)
    assert "not a fleet report this toolkit reads" in str(refused.value)
    assert "without --rerun-failed" in refused.value.hint


def test_the_host_modules_report_only_statuses_the_fleet_report_knows():
    """The modules run on the hosts without the toolkit, so they spell a host's status themselves: every
    status they can send is a HostStatus (the collector reads it as one; an unknown word would stop the run)."""
    library = Path(__file__).resolve().parent.parent / "vllm_provision" / "fleet" / "ansible" / "library"
    sent = set()
    for module in library.glob("*.py"):
        text = module.read_text()
        sent |= set(re.findall(r'"status": "([^"]+)"', text)) | set(re.findall(r'\bfail\("([^"]+)"', text))
    assert {"failed", "timed out"} <= sent          # the scan finds them (the modules' own words)
    assert sent <= {s.value for s in fleet_report.STATUSES}
    assert "pending" not in {s.value for s in fleet_report.STATUSES}       # never a written host's status


def test_a_host_without_a_kind_is_failed_in_plain_words_ansible_stores(isolated):
    """The kinds filter's answer becomes an Ansible variable: a host it cannot place (no GPU, no arch list)
    is failed with the bare word, not a str subclass that Ansible refuses to store (it warns and converts)."""
    from vllm_provision.fleet import plays
    raw = {"python": {"version": "3.11.2"}, "interpreters": {"3.11": "/usr/bin/python3.11"}, "platform": "x86_64",
           "glibc": "2.36", "gcc": "12.2.0", "cpu_count": 2, "home": "/home/u"}
    found = plays.kinds(["bare"], {"bare": {"vllmp_host": raw}}, {"release": "0.2.2"})
    assert found["kinds"] == {} and type(found["errors"]["bare"]["status"]) is str
    assert found["errors"]["bare"]["status"] == "failed" and "no GPU" in found["errors"]["bare"]["detail"]


def test_a_status_word_the_toolkit_does_not_know_fails_the_host_and_says_the_word():
    from vllm_provision.fleet.collect import Collector
    row = fleet_report.HostResult("gpu-a")
    Collector().end(row, "facts", {"status": "exploded", "detail": "the module's words"})
    assert row.status == HostStatus.FAILED and "'exploded'" in row.detail
    Collector().end(row, "facts", {"status": "timed out"})
    assert row.status == HostStatus.TIMED_OUT
