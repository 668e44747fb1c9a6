"""No secret on disk, in output or in any argv: `plan`, `doctor` and `env` (success and failure) against a PyPI
index and a conda channel on 127.0.0.1 that both require credentials. Every process the toolkit starts is
watched through /proc while it runs; the workspace, the cache and TMPDIR are read afterwards."""

from __future__ import annotations

import base64
import dataclasses
import functools
import http.server
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest
import rattler  # noqa: E402,F401 (a test dependency (pyproject's test extra): a broken install fails here, never skips)
from conftest import ROOT
from mirrors import Proxy, StaticServer, build_conda_package, index_channel, pypi_mirror, wheelhouse, write_lock  # noqa: F401

from vllm_provision.core.errors import ConfigError
from vllm_provision.core.redact import MIN_VALUE_LENGTH, redact_text, redact_url, url_secrets
from vllm_provision.envs import conda
from vllm_provision.pipeline import StepContext, run_steps
from vllm_provision.plan import build_plan
from vllm_provision.probes.host import HostFacts

USER, PASSWORD, TOKEN = "alice", "s3cr3t-P@ss:w0rd", "tok-abc123XYZ"
# every form a leak could take: raw, percent-encoded, split at its '@' (old redaction cut there), in a Basic header
LEAK_FORMS = ("s3cr3t", "w0rd", quote(PASSWORD, safe=""), TOKEN,
              base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode())
MARKER_VARIABLE = "PROCESS_UNDER_TEST_MARKER"
# Tokens and passwords in every spelling a URL allows: each holds a character the first redaction pattern
# ([A-Za-z0-9_.-] only) stopped at, so a part of it was printed in full.
ODD_TOKENS = ["tok~en-9f3k2LQ", "tok+en-9f3k2LQ", "tok:en-9f3k2LQ", "tok%2Ben-9f3k2LQ", "tok!$'()*,;=-9f3k2LQ"]
ODD_PASSWORDS = ["pw~and+more:9f3k2LQ", "pw!$&'()*,;=9f3k2LQ", "pw%21%40esc-9f3k2LQ", "pw#and?q-9f3k2LQ"]


def forms_of(secret: str) -> tuple[str, ...]:
    """A secret as written, percent-decoded, and its distinctive tail (a leak of a part of it)."""
    from urllib.parse import unquote
    return tuple(dict.fromkeys((secret, unquote(secret), secret[-7:])))


def leaks(text: str | bytes, forms=None) -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    return [form for form in (LEAK_FORMS if forms is None else forms) if form.encode() in data]


class AuthChannel:
    """A conda channel on 127.0.0.1 answering only with Basic auth, or under the anaconda-style /t/<token>/ path."""

    def __init__(self, root: Path, tokens=(TOKEN,)):
        self.served, self.denied = 0, 0
        want = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        outer = self
        from urllib.parse import unquote

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                token = next((t for t in tokens if unquote(self.path).startswith(f"/t/{unquote(t)}/")), None)
                if token is not None:
                    self.path = "/" + unquote(self.path)[len(f"/t/{unquote(token)}/"):]
                elif self.headers.get("Authorization") != want:
                    outer.denied += 1
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="channel"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                outer.served += 1
                super().do_GET()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def basic_url(self) -> str:
        return f"http://{USER}:{PASSWORD}@127.0.0.1:{self.port}/chan"

    def token_url(self, token: str = TOKEN) -> str:
        return f"http://127.0.0.1:{self.port}/t/{token}/chan"


@pytest.fixture
def channel(tmp_path):
    """tinyconda (-> tinydep), no python: enough to solve and install, and to fail an env."""
    root = tmp_path / "channel-root"
    for name, depends in (("tinydep", ()), ("tinyconda", ("tinydep",))):
        build_conda_package(root / "chan", name, "1.0", depends=depends)
    index_channel(root / "chan")
    server = AuthChannel(root)
    yield server
    server.server.shutdown()
    server.server.server_close()


def credentialed_proxy(upstream: str) -> Proxy:
    proxy = Proxy(upstream, auth=(USER, PASSWORD))
    proxy.credentialed = proxy.url("/simple/", userinfo=f"{USER}:{PASSWORD}")
    return proxy


@pytest.fixture
def index(tmp_path):
    """An index that has nothing (every project 404): installs fail after authenticating, and nothing is
    fetched from elsewhere (pypiserver would redirect a missing project to the public index)."""
    (tmp_path / "empty-index").mkdir()
    upstream = StaticServer(tmp_path / "empty-index")
    proxy = credentialed_proxy(upstream.url)
    yield proxy
    proxy.stop()
    upstream.stop()


@pytest.fixture
def tiny_index(pypi_mirror):
    """pypiserver with tinya/tinyb/tinyc behind Basic auth."""
    proxy = credentialed_proxy(f"http://127.0.0.1:{pypi_mirror.port}")
    yield proxy
    proxy.stop()


class ArgvSampler:
    """Every ~20 ms, the argv of every process under `root_pid` (by parent chain) or carrying `marker` in its
    environment (which survives re-parenting), for as long as the `with` block runs."""

    def __init__(self, root_pid: int, marker: str, forms=None):
        self.root_pid, self.marker, self.forms = root_pid, marker.encode(), forms
        self.argvs: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _loop(self):
        while not self._stop.is_set():
            self.sample()
            time.sleep(0.02)

    @staticmethod
    def _read(path: str) -> bytes:
        try:
            with open(path, "rb") as fh:
                return fh.read()
        except OSError:
            return b""

    def sample(self) -> None:
        parents = {}
        for name in os.listdir("/proc"):
            stat = self._read(f"/proc/{name}/stat") if name.isdigit() else b""
            if stat:
                parents[int(name)] = int(stat.rsplit(b")", 1)[1].split()[1])
        for pid in parents:
            ancestor, hops = pid, 0
            while ancestor not in (self.root_pid, 0, 1) and hops < 64:
                ancestor, hops = parents.get(ancestor, 0), hops + 1
            if ancestor == self.root_pid or self.marker in self._read(f"/proc/{pid}/environ"):
                argv = self._read(f"/proc/{pid}/cmdline").replace(b"\0", b" ").decode(errors="replace").strip()
                if argv:
                    self.argvs[pid] = argv

    def leaks(self) -> dict[str, list[str]]:
        return {argv: found for argv in self.argvs.values() if (found := leaks(argv, self.forms))}


def leaks_on_disk(*roots: Path, forms=None) -> dict[str, list[str]]:
    out = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                path = Path(dirpath) / name
                found = set(leaks(str(path), forms))
                if path.is_file() and not path.is_symlink():
                    found |= set(leaks(path.read_bytes(), forms))
                if found:
                    out[str(path)] = sorted(found)
    return out


@pytest.fixture
def places(tmp_path):
    out = {name: tmp_path / name for name in ("ws", "cache", "tmp")}
    out["tmp"].mkdir()
    return out


def run_cli(args: list[str], places: dict, settings: dict[str, str], timeout: float = 600, forms=None):
    """`python -m invoke ARGS` as a user runs it, with its argv and every descendant's sampled meanwhile."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLMP_", "PIP_", "UV_"))}
    marker = uuid.uuid4().hex
    env.update({"VLLMP_CACHE_DIR": str(places["cache"]), "VLLMP_WORKSPACE_ROOT": str(places["ws"]),
                "TMPDIR": str(places["tmp"]), "PIP_CONFIG_FILE": os.devnull, MARKER_VARIABLE: marker,
                "VLLMP_PYPI__TIMEOUT": "10", "VLLMP_PYPI__RETRIES": "0", **settings})
    proc = subprocess.Popen([sys.executable, "-m", "invoke", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with ArgvSampler(proc.pid, marker, forms) as sampler:
        out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out + err, sampler


def assert_no_leak(output: str, sampler: ArgvSampler, places: dict, *, saw: str, forms=None) -> None:
    assert leaks(output, forms) == [], output
    assert any(saw in argv for argv in sampler.argvs.values()), sampler.argvs   # the sampler did see the work
    assert sampler.leaks() == {}
    assert leaks_on_disk(*places.values(), forms=forms) == {}


def credentialed(index, channel) -> dict[str, str]:
    return {"VLLMP_PYPI__INDEX_URL": index.credentialed,
            "VLLMP_CONDA__CHANNELS": f'["{channel.basic_url}", "{channel.token_url()}"]'}


def test_plan_shows_no_secret(index, channel, places):
    code, output, sampler = run_cli(["plan", "--json"], places, credentialed(index, channel))
    assert code == 0, output
    assert f"{USER}:***@127.0.0.1:{index.port}" in output and "/t/***/chan" in output
    assert_no_leak(output, sampler, places, saw="invoke")


def test_doctor_uses_the_credentials_and_shows_none(index, channel, places):
    code, output, sampler = run_cli(["doctor", "--timeout", "2"], places, credentialed(index, channel))
    assert "Traceback" not in output
    assert index.requests and index.denied == 0          # the index was asked, with the right credentials
    assert channel.served and channel.denied == 0        # both channels too
    assert_no_leak(output, sampler, places, saw="invoke")


def test_env_failure_on_the_index_shows_no_secret(index, channel, places):
    """venv backend, the real seed lock: the loopback index has none of it, so uv fails after authenticating."""
    settings = {**credentialed(index, channel), "VLLMP_ENV__BACKEND": "venv", "VLLMP_ENV__PYTHON": "3.11"}
    code, output, sampler = run_cli(["env"], places, settings)
    assert code != 0 and "error:" in output and "Traceback" not in output, output
    assert index.requests and index.denied == 0
    assert_no_leak(output, sampler, places, saw="install")


def test_env_failure_on_the_channel_shows_no_secret(index, channel, places):
    """conda backend through rattler: it authenticates to the channel, then finds no python there."""
    settings = {**credentialed(index, channel), "VLLMP_ENV__BACKEND": "conda"}
    code, output, sampler = run_cli(["env"], places, settings)
    assert code == 2 and "have no python" in output and "Traceback" not in output, output
    assert channel.served and channel.denied == 0
    assert_no_leak(output, sampler, places, saw="rattler_child")


@pytest.fixture
def odd_channels(tmp_path):
    """The channel of `channel`, answering under /t/<token>/ for every one of ODD_TOKENS."""
    root = tmp_path / "channel-root"
    for name, depends in (("tinydep", ()), ("tinyconda", ("tinydep",))):
        build_conda_package(root / "chan", name, "1.0", depends=depends)
    index_channel(root / "chan")
    server = AuthChannel(root, tokens=ODD_TOKENS)
    yield server
    server.server.shutdown()
    server.server.server_close()


def test_tokens_in_any_spelling_are_masked_in_plan_doctor_and_env(odd_channels, places):
    """plan --json, doctor, and a conda env that fails after reading the channels (error line, logs/env.log,
    rattler's caches): no token shows, whatever URL-legal characters it holds."""
    forms = [f for token in ODD_TOKENS for f in forms_of(token)]
    urls = [odd_channels.token_url(token) for token in ODD_TOKENS]
    settings = {"VLLMP_CONDA__CHANNELS": json.dumps(urls), "VLLMP_ENV__BACKEND": "conda",
                "VLLMP_PYPI__INDEX_URL": "http://127.0.0.1:9/simple/", "VLLMP_FETCH__GITHUB": "false"}
    code, output, sampler = run_cli(["plan", "--json"], places, settings, forms=forms)
    assert code == 0 and output.count("/t/***/chan") == len(ODD_TOKENS), output
    assert_no_leak(output, sampler, places, saw="invoke", forms=forms)
    code, output, sampler = run_cli(["doctor", "--timeout", "2"], places, settings, forms=forms)
    assert "Traceback" not in output and odd_channels.served >= len(ODD_TOKENS), output   # read through each token
    assert_no_leak(output, sampler, places, saw="invoke", forms=forms)
    code, output, sampler = run_cli(["env"], places, settings, forms=forms)
    assert code == 2 and "have no python" in output and "/t/***/chan" in output, output
    assert (places["ws"] / "0.2.2-pypi-cu13" / "logs" / "env.log").is_file()        # read by leaks_on_disk
    assert_no_leak(output, sampler, places, saw="rattler_child", forms=forms)


def test_passwords_in_any_spelling_are_masked(places):
    """Passwords in index and channel URLs, holding any character a URL's userinfo may (and '#'/'?' pasted
    unescaped): `plan --json` and `doctor` show `alice:***@`, and no part of any password anywhere."""
    forms = [f for password in ODD_PASSWORDS for f in forms_of(password)]
    urls = [f"http://{USER}:{password}@127.0.0.1:9/{n}/" for n, password in enumerate(ODD_PASSWORDS)]
    settings = {"VLLMP_PYPI__INDEX_URL": urls[0], "VLLMP_PYPI__EXTRA_INDEX_URLS": json.dumps(urls[1:]),
                "VLLMP_CONDA__CHANNELS": json.dumps(urls)}
    for args in (["plan", "--json"], ["doctor", "--timeout", "1"]):
        code, output, sampler = run_cli(args, places, settings, forms=forms)
        assert "Traceback" not in output and f"{USER}:***@127.0.0.1:9/3/" in output, output
        assert_no_leak(output, sampler, places, saw="invoke", forms=forms)


def in_process_plan(tmp_path, places, *, index_url, channels, backend="venv", lock=None):
    cli = {"profile": "seed", "workspace_root": str(places["ws"]), "cache_dir": str(places["cache"]),
           "env": {"backend": backend, "python": "3.11", "installer": "uv"},
           "pypi": {"index_url": index_url, "timeout": 10, "retries": 0},
           "conda": {"channels": channels}}
    plan = build_plan(cli, environ={}, facts=HostFacts())
    return dataclasses.replace(plan, env=dataclasses.replace(plan.env, lock=str(lock) if lock else None))


@pytest.fixture
def in_process(places, monkeypatch):
    """The toolkit running in this process: TMPDIR pointed at the test's dir, children marked for the sampler."""
    monkeypatch.setenv("TMPDIR", str(places["tmp"]))
    monkeypatch.setattr(tempfile, "tempdir", None)   # gettempdir() reads TMPDIR again
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    for name in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_INDEX_URL", "UV_INDEX_URL"):
        monkeypatch.delenv(name, raising=False)
    marker = uuid.uuid4().hex
    monkeypatch.setenv(MARKER_VARIABLE, marker)
    return marker


def test_env_success_from_the_credentialed_index_leaves_no_secret(tmp_path, tiny_index, channel, places, wheelhouse,
                                                                  in_process, capfd):
    index = tiny_index
    lock = write_lock(tmp_path / "locks" / "seed-py3.11.txt", wheelhouse)
    plan = in_process_plan(tmp_path, places, index_url=index.credentialed, channels=[channel.basic_url], lock=lock)
    with ArgvSampler(os.getpid(), in_process) as sampler:
        [result] = [r for r in run_steps(plan, HostFacts(), ["env"], force=["env"]) if r.step == "env"]
    assert result.status == "ok", result.detail
    assert index.requests and index.denied == 0
    assert_no_leak("".join(capfd.readouterr()) + result.detail, sampler, places, saw="install")


@pytest.mark.parametrize("auth", ["basic", "token"])
def test_rattler_authenticates_without_a_file_or_argv(tmp_path, index, channel, places, in_process, capfd, auth):
    url = channel.basic_url if auth == "basic" else channel.token_url()
    plan = in_process_plan(tmp_path, places, index_url=index.credentialed, channels=[url], backend="conda")
    plan.workspace.ensure()
    ctx = StepContext(plan, HostFacts(), "env")
    prefix = places["ws"] / "env"        # inside the workspace: its package records are read too
    with ArgvSampler(os.getpid(), in_process) as sampler:
        info = conda.solve_install(ctx, [url], ["tinyconda"], prefix, what="test env")
    assert info["tool"] == "rattler" and info["packages"] == {"tinyconda": "1.0", "tinydep": "1.0"}
    assert channel.served and channel.denied == 0
    assert_no_leak("".join(capfd.readouterr()), sampler, places, saw="rattler_child")


def test_credentialed_channels_never_go_to_a_conda_cli(tmp_path, index, channel, places, in_process, monkeypatch):
    """A conda CLI takes channels only in argv; with credentials the toolkit uses rattler instead.
    (`true` stands in as the CLI found on PATH: a real program that accepts any argv.)"""
    monkeypatch.setattr(conda, "TOOLS", ("true",))
    plan = in_process_plan(tmp_path, places, index_url=index.credentialed, channels=[channel.basic_url], backend="conda")
    plan.workspace.ensure()
    ctx = StepContext(plan, HostFacts(), "env")
    bare = f"http://127.0.0.1:{channel.port}/chan"
    assert conda.solve_install(ctx, [bare], ["tinyconda"], tmp_path / "cli", what="test env")["tool"] == "true"
    info = conda.solve_install(ctx, [channel.basic_url], ["tinyconda"], tmp_path / "env", what="test env")
    assert info["tool"] == "rattler"
    assert leaks_on_disk(*places.values()) == {}


def test_credentialed_channel_without_rattler_is_refused_not_put_in_argv(tmp_path, index, channel, places,
                                                                          in_process, monkeypatch):
    monkeypatch.setattr(conda, "TOOLS", ("true",))
    monkeypatch.setitem(sys.modules, "rattler", None)    # py-rattler not installed
    plan = in_process_plan(tmp_path, places, index_url=index.credentialed, channels=[channel.basic_url],
                           backend="conda")
    plan.workspace.ensure()
    with pytest.raises(ConfigError) as err:
        conda.solve_install(StepContext(plan, HostFacts(), "env"), [channel.basic_url], ["tinyconda"],
                            tmp_path / "env", what="test env")
    assert "carry credentials" in err.value.message and "conda` extra" in err.value.hint
    assert leaks(err.value.message) == [] and not (tmp_path / "env").exists()
    assert leaks_on_disk(*places.values()) == {}


# ---- redaction itself ------------------------------------------------------------------------------

@pytest.mark.parametrize("url,shown", [
    (f"http://{USER}:{PASSWORD}@127.0.0.1:8080/simple/", "http://alice:***@127.0.0.1:8080/simple/"),
    ("https://tok123456@host/x", "https://***@host/x"),
    (f"https://conda.anaconda.org/t/{TOKEN}/private/linux-64/repodata.json",
     "https://conda.anaconda.org/t/***/private/linux-64/repodata.json"),
    ("https://h/s?a=1&token=T0K&api_key=K3Y&access_token=A&X-Amz-Signature=S&sig=G&password=P&secret=Z#f",
     "https://h/s?a=1&token=***&api_key=***&access_token=***&X-Amz-Signature=***&sig=***&password=***&secret=***#f"),
    ("https://pypi.org/simple/torch/?format=json", "https://pypi.org/simple/torch/?format=json"),
    ("conda-forge", "conda-forge"),
])
def test_urls_are_redacted_by_structure(url, shown):
    assert redact_url(url) == shown
    assert redact_text(f"GET '{url}' failed") == f"GET '{shown}' failed"


def test_short_secret_is_not_replaced_by_value():
    url = "http://bob:p@mirror.corp/simple"
    text = "pip install failed: http://bob:p@mirror.corp/simple unreachable; password prompt suppressed"
    assert redact_text(text, urls=[url]) == ("pip install failed: http://bob:***@mirror.corp/simple unreachable; "
                                             "password prompt suppressed")
    assert len(url_secrets(url)[0]) < MIN_VALUE_LENGTH


def test_long_secret_is_replaced_by_value_where_no_url_shows_it():
    url = f"http://{USER}:{quote(PASSWORD, safe='')}@127.0.0.1/simple/"
    text = f"netrc said {PASSWORD}; the header had {quote(PASSWORD, safe='')}; token {TOKEN}"
    shown = redact_text(text, urls=[url, f"http://h/t/{TOKEN}/chan"])
    assert leaks(shown) == [] and shown.count("***") == 3


def test_redaction_keeps_json_valid():
    """pip inspect's JSON carries READMEs with badge URLs such as `badge.svg?token=X\\"`: the redacted value
    must stop before the backslash of the escaped quote (verify parses that JSON)."""
    text = json.dumps({"description": '<img src="https://codecov.io/gh/o/r/badge.svg?token=RXP95LE2XL"> '
                                      'and https://user:s3cr3t-P@ss@idx.example/simple'})
    redacted = redact_text(text)
    assert "RXP95LE2XL" not in redacted and "s3cr3t" not in redacted
    assert json.loads(redacted)["description"].startswith('<img src="https://codecov.io/gh/o/r/badge.svg?token=***">')
