"""`./inv doctor`: is this host ready to build the plan? Runs without the target env, never imports vllm.

Named checks (DeepOps doctor style), each pass/warn/fail/skip with one line of detail and a fix.
Everything slow (subprocess probes, each mirror/channel look-up) runs in parallel with a short
timeout, so the whole doctor stays within a few seconds even when a mirror hangs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from packaging.utils import canonicalize_name

from vllm_provision import PROJECT_ROOT
from vllm_provision.checks import Check, CheckStatus, check_driver, parse_version
from vllm_provision.checks.install import check_bytecode
from vllm_provision.checks.resources import check_disk, check_ram, disk_needed
from vllm_provision.checks.toolchain import check_archs as toolchain_archs
from vllm_provision.checks.toolchain import check_gcc, check_nvcc_torch, check_release_floor, check_torch_pin
from vllm_provision.core import envinfo, runner
from vllm_provision.core.errors import ProvisionError
from vllm_provision.core.redact import redact_text, redact_url
from vllm_provision.envs import lock
from vllm_provision.plan import BUILD_JOB_PEAK_BYTES, Plan, arch_refusal, compilable_archs, unsupported_archs
from vllm_provision.probes.envprobe import bytecode_of, torch_of
from vllm_provision.probes.host import (
    HostFacts,
    NvccInfo,
    best_nvcc,
    compiler_version,
    host_compiler,
    nvcc_candidates,
    probe_cmake,
    probe_nvcc,
)
from vllm_provision.sources.download import HttpSettings, NotFound, fetch_text, open_url

DEFAULT_TIMEOUT = 3.0            # seconds for each network look-up and quick probe
KEY_PACKAGES = ("torch", "vllm", "xformers")
CONDA_SUBDIRS = ("linux-64", "noarch")
CONDA_KEY_PACKAGES = ("python",)
REPODATA_READ_LIMIT = 32 << 20   # only read small (mirror-side filtered) repodata in full
NO_DRIVER_HINT = ("on a GPU host install the NVIDIA driver (nvidia-smi must work); for a CPU-only image build "
                  "give only the archs your GPUs need, e.g. --arch 9.0, for a shorter build")


# ---------------------------------------------------------------------------------------------- probes
def lock_torch(plan: Plan, root: Path = PROJECT_ROOT) -> tuple[str | None, str | None]:
    """(torch version, CUDA from its +cuXYZ tag) pinned in the plan's lock file, if there is one."""
    if not plan.env.lock:
        return None, None
    try:
        version = lock.pinned(root / plan.env.lock).get("torch")
    except OSError:
        return None, None
    if not version:
        return None, None
    tag = re.search(r"\+cu(\d+)(\d)$", version)
    return version, f"{tag.group(1)}.{tag.group(2)}" if tag else None


GPU_APPS_QUERY = "gpu_uuid,pid,process_name,used_memory"
OTHER_PROCESSES_HINT = "their memory counts against gpu_memory_utilization (fewer KV-cache blocks): stop them"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def parse_gpu_apps(text: str) -> dict[str, list[dict]]:
    """`nvidia-smi --query-compute-apps=gpu_uuid,pid,process_name,used_memory --format=csv,noheader,nounits`
    -> {gpu uuid: [{pid, name, used_mib}]}."""
    out: dict[str, list[dict]] = {}
    for line in text.strip().splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) < 4 or not cells[1].isdigit():
            continue
        try:
            used = int(float(cells[-1]))
        except ValueError:
            used = 0
        out.setdefault(cells[0], []).append({"pid": int(cells[1]), "name": ",".join(cells[2:-1]), "used_mib": used})
    return out


def parse_topology(text: str) -> dict | None:
    """`nvidia-smi topo -m` -> {devices, matrix {a: {b: link}}, links ["GPU0-GPU1 NV18"], affinity, legend}.

    The device columns (GPUs, then NICs) line up with the header; the affinity columns after them are
    padded with extra tabs, so they are matched to their names without the empty cells."""
    lines = [_ANSI.sub("", line) for line in text.splitlines()]
    header_at = next((i for i, line in enumerate(lines) if re.search(r"\tGPU0\b", "\t" + line.strip())), None)
    if header_at is None:
        return None
    names = [c.strip() for c in lines[header_at].split("\t") if c.strip()]
    devices = [n for n in names if re.fullmatch(r"(GPU|NIC)\d+", n)]
    extra = names[len(devices):]
    matrix: dict[str, dict[str, str]] = {}
    affinity: dict[str, dict[str, str]] = {}
    legend: dict[str, str] = {}
    for line in lines[header_at + 1:]:
        cells = line.split("\t")
        name = cells[0].strip()
        if re.fullmatch(r"(GPU|NIC)\d+", name) and len(cells) > len(devices):
            values = [c.strip() for c in cells[1:]]
            matrix[name] = dict(zip(devices, values[:len(devices)], strict=True))
            affinity[name] = dict(zip(extra, [v for v in values[len(devices):] if v], strict=False))
            continue
        m = re.match(r"^\s+(\S+)\s+=\s+(.+?)\s*$", line)
        if m:
            legend[m.group(1)] = m.group(2)
    gpus = [d for d in devices if d.startswith("GPU")]
    links = [f"{a}-{b} {matrix.get(a, {}).get(b, '?')}" for i, a in enumerate(gpus) for b in gpus[i + 1:]]
    return {"devices": devices, "matrix": matrix, "links": links,
            "affinity": {k: v for k, v in affinity.items() if k.startswith("GPU")}, "legend": legend}


def probe_gpu_links(timeout: float) -> tuple[str | None, str | None, str | None]:
    """(compute-apps CSV with each process's GPU, `nvidia-smi topo -m` text, why the topology is missing)."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None, None, "nvidia-smi not found"
    apps = runner.capture([smi, f"--query-compute-apps={GPU_APPS_QUERY}", "--format=csv,noheader,nounits"],
                          timeout=timeout)
    topo = runner.capture([smi, "topo", "-m"], timeout=timeout)
    why = None
    if topo is None or topo.returncode != 0:
        why = "nvidia-smi topo -m: " + ((topo.output.strip().splitlines() or ["no output"])[-1] if topo else "did not run")
    return (apps.output if apps and apps.returncode == 0 else None,
            topo.output if topo and topo.returncode == 0 else None, why)


def gpu_section(facts: HostFacts, apps_csv: str | None, topo_text: str | None, topo_error: str | None = None) -> dict:
    """The GPUs for doctor's JSON and report.json's host section: count, each GPU's memory in use by other
    processes (doctor itself holds none), and the link matrix where `nvidia-smi topo -m` answers."""
    apps = parse_gpu_apps(apps_csv or "")
    devices = []
    for g in facts.gpus:
        procs = apps.get(g.uuid, []) if g.uuid else []
        devices.append({"index": g.index, "name": g.name, "uuid": g.uuid, "memory_total_mib": g.memory_total_mib,
                        "memory_used_mib": g.memory_used_mib,
                        "used_by_other_processes_mib": sum(p["used_mib"] for p in procs), "processes": procs})
    topology = parse_topology(topo_text) if topo_text else None
    section: dict = {"count": len(facts.gpus), "devices": devices, "topology": topology}
    if topology is None and facts.gpus:
        section["topology_error"] = topo_error or "nvidia-smi topo -m printed no matrix"
    if apps_csv is None and facts.gpus:
        section["processes_error"] = "nvidia-smi --query-compute-apps with gpu_uuid did not answer"
    return section


# ---------------------------------------------------------------------------------------------- checks
def _caps_text(facts: HostFacts) -> str:
    names: dict[str, int] = {}
    for g in facts.gpus:
        key = f"{g.name} (cc {g.compute_cap}, {g.memory_total_mib // 1024} GiB)"
        names[key] = names.get(key, 0) + 1
    return ", ".join(f"{n}× {k}" for k, n in names.items())


def check_gpus(facts: HostFacts, plan: Plan, section: dict | None = None) -> Check:
    if facts.gpus:
        detail = f"{len(facts.gpus)} GPU(s): {_caps_text(facts)}" + _links_text(section, len(facts.gpus))
        if section and "processes_error" not in section:
            return _check_gpus_per_device(detail, section)
        others = getattr(facts, "gpu_processes", ()) or ()
        if others:
            used = sum(getattr(p, "used_mib", 0) for p in others)
            names = ", ".join(f"{getattr(p, 'name', '?')} (pid {getattr(p, 'pid', '?')})" for p in others[:3])
            return Check("gpus", CheckStatus.WARN, f"{detail}; {len(others)} other process(es) hold {used} MiB: {names}",
                         OTHER_PROCESSES_HINT)
        return Check("gpus", CheckStatus.PASS, detail)
    # No GPU: the build still runs (a CPU-only image build), for the archs the plan chose; only
    # vLLM's import and the smoke need a GPU, and provision skips those with the reason.
    why = facts.gpu_error or "no GPU listed by nvidia-smi"
    archs = ";".join(plan.build.arch_list)
    if plan.build.arch_source == "config":
        return Check("gpus", CheckStatus.WARN, f"{why}; building for the configured archs {archs} "
                     f"({plan.build.expected_reason}; CPU-only image build: nothing can run here)",
                     "run verify's GPU checks and smoke on a GPU host")
    return Check("gpus", CheckStatus.WARN, f"{why}; building for {archs} ({plan.build.expected_reason}); "
                 "the smoke is skipped here", NO_DRIVER_HINT)


def _links_text(section: dict | None, count: int) -> str:
    if not section or count < 2:
        return ""
    links = (section.get("topology") or {}).get("links")
    return f"; links {', '.join(links)}" if links else f"; links unknown ({section.get('topology_error')})"


def _check_gpus_per_device(detail: str, section: dict) -> Check:
    """Each GPU's memory held by other processes, the processes named."""
    held = []
    for d in section["devices"]:
        names = ", ".join(f"{p['name']} pid {p['pid']}" for p in d["processes"][:3])
        held.append(f"GPU {d['index']} {d['used_by_other_processes_mib']} MiB" + (f" ({names})" if names else ""))
    detail += "; held by other processes: " + ", ".join(held)
    if any(d["processes"] for d in section["devices"]):
        return Check("gpus", CheckStatus.WARN, detail, OTHER_PROCESSES_HINT)
    return Check("gpus", CheckStatus.PASS, detail)


def check_nvcc(nvccs: list[NvccInfo], torch_cuda: str | None, torch_version: str | None, torch_from: str,
               plan: Plan) -> tuple[Check, NvccInfo | None]:
    """nvcc vs torch's CUDA (the shared check); before the env exists, a compiler the env step
    provisions (CUDA >= 13 from PyPI wheels, 12.x from a conda channel) turns a mismatch into a warning."""
    nvcc = best_nvcc(nvccs, torch_cuda)
    if not torch_cuda and not torch_version:          # torch not known yet: nothing to match against
        if nvcc:
            return Check("nvcc-vs-torch", CheckStatus.WARN, f"nvcc {nvcc.version} at {nvcc.path}; torch's CUDA unknown "
                         f"({torch_from})", "install the profile's torch first (`./inv env`) or set env.cuda"), nvcc
        return Check("nvcc-vs-torch", CheckStatus.FAIL, f"no nvcc found; torch's CUDA unknown ({torch_from})",
                     "install the CUDA toolkit matching torch, or set CUDA_HOME"), None
    check = check_nvcc_torch(torch_cuda, nvcc.version if nvcc else None, nvcc.path if nvcc else None)
    check = replace(check, detail=f"{check.detail} [{torch_from}]")
    major = getattr(parse_version(torch_cuda), "major", 0)
    if check.status == CheckStatus.FAIL and torch_cuda and plan.env.backend != "existing" and (major >= 13 or plan.env.channels):
        where = "nvidia-cuda-nvcc wheels from the PyPI index" if major >= 13 else \
            f"cuda-nvcc={torch_cuda} from the conda channel"
        check = replace(check, status=CheckStatus.WARN, detail=f"{check.detail}; the env step installs {where}")
    return check, nvcc


def check_archs(plan: Plan, facts: HostFacts, nvcc: NvccInfo | None) -> Check:
    release = plan.release
    unsupported_gpu = unsupported_archs(release, facts.compute_caps)
    if unsupported_gpu:      # the build refuses them with the same words (plan.gpu_refusal)
        refusal = arch_refusal(release, unsupported_gpu, "gpus")
        return Check("arch-list", CheckStatus.FAIL, refusal.message, refusal.hint)
    return toolchain_archs(plan.build.arch_list, plan.build.arch_source, release, nvcc)


def _http(timeout: float, plan: Plan) -> HttpSettings:
    return HttpSettings(timeout=timeout, retries=0, backoff=0.0, cert=plan.settings.pypi.cert)


def _project_files(index_url: str, project: str, settings: HttpSettings) -> list[str]:
    """File names on a PEP 503 (HTML) / PEP 691 (JSON) simple-index project page."""
    from vllm_provision.sources.release import _Links  # the same parser the fetch step uses
    url = index_url.rstrip("/") + f"/{canonicalize_name(project)}/"
    text, ctype = fetch_text(url, settings, {"Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1"})
    if "json" in ctype:
        return [f.get("filename", "") for f in json.loads(text).get("files", [])]
    parser = _Links()
    parser.feed(text)
    return [name or href.rsplit("/", 1)[-1].split("#")[0] for name, href in parser.links]


def _short(exc: Exception) -> str:
    msg = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return redact_text(msg.splitlines()[0])[:160]


def check_index(index_url: str, plan: Plan, timeout: float) -> Check:
    """One configured PyPI index/mirror: reachable and serving the release's key packages."""
    shown = redact_url(index_url)
    settings = _http(timeout, plan)
    needs_torch = plan.env.backend != "existing"
    served, missing, problems = [], [], []
    started = time.monotonic()

    def look(project: str):
        try:
            return project, _project_files(index_url, project, settings), None
        except Exception as exc:  # noqa: BLE001 - sorted out below
            return project, None, exc

    with ThreadPoolExecutor(max_workers=len(KEY_PACKAGES)) as pool:
        answers = list(pool.map(look, KEY_PACKAGES))
    for project, files, exc in answers:
        if isinstance(exc, NotFound):
            missing.append(project)
            continue
        if exc is not None:
            return Check(f"index {shown}", CheckStatus.FAIL, f"unreachable: {_short(exc)}",
                         "check the URL, proxy (HTTPS_PROXY/NO_PROXY), credentials (~/.netrc) and pypi.cert")
        if project == "vllm" and not any(f == plan.release.sdist.file or f.startswith(f"vllm-{plan.release.version}-")
                                         for f in files):
            problems.append(f"vllm page has no {plan.release.version} file")
            continue
        served.append(f"{project} ({len(files)} files)")
    seconds = time.monotonic() - started
    detail = f"serves {', '.join(served) or 'none of ' + ', '.join(KEY_PACKAGES)}"
    if missing:
        detail += f"; missing: {', '.join(missing)}"
    if problems:
        detail += f"; {'; '.join(problems)}"
    detail += f" ({seconds:.1f} s)"
    fatal = [p for p in missing if p == "vllm" or (p == "torch" and needs_torch)] + problems
    if fatal:
        return Check(f"index {shown}", CheckStatus.FAIL, detail,
                     "make the mirror proxy/host these projects, or add one that does to pypi.extra_index_urls")
    if missing:
        return Check(f"index {shown}", CheckStatus.WARN, detail, "only needed when the profile installs them")
    return Check(f"index {shown}", CheckStatus.PASS, detail)


def check_channel(channel: str, plan: Plan, timeout: float) -> Check:
    """One conda channel: repodata.json of each subdir reachable (and, when small, listing the key packages)."""
    shown = redact_url(channel)
    settings = _http(timeout, plan)
    seen, notes = [], []
    for subdir in CONDA_SUBDIRS:
        url = channel.rstrip("/") + f"/{subdir}/repodata.json"
        try:
            with open_url(url, settings) as resp:
                size = int(resp.headers.get("Content-Length") or 0)
                if size and size > REPODATA_READ_LIMIT:
                    seen.append(f"{subdir} ({size >> 20} MiB)")
                    continue
                data = json.loads(resp.read(REPODATA_READ_LIMIT + 1).decode("utf-8", "replace"))
        except NotFound as exc:
            return Check(f"channel {shown}", CheckStatus.FAIL, f"{subdir}/repodata.json not found: {_short(exc)}",
                         "check the channel URL (…/<channel> without the subdir)")
        except (ProvisionError, OSError, ValueError) as exc:
            return Check(f"channel {shown}", CheckStatus.FAIL, f"{subdir}/repodata.json unreachable: {_short(exc)}",
                         "check the URL, proxy and credentials of conda.channels")
        names = {p.get("name") for key in ("packages", "packages.conda") for p in (data.get(key) or {}).values()}
        seen.append(f"{subdir} ({len(names)} names)")
        if subdir == "linux-64":
            notes += [n for n in CONDA_KEY_PACKAGES if n not in names]
    if notes:
        return Check(f"channel {shown}", CheckStatus.FAIL, f"repodata {', '.join(seen)}; missing: {', '.join(notes)}",
                     "mirror the channel that provides these packages")
    return Check(f"channel {shown}", CheckStatus.PASS, f"repodata {', '.join(seen)}")


def check_source(plan: Plan, timeout: float) -> Check:
    from vllm_provision.sources.release import cached_archive, sdist_url_from_index
    hit = cached_archive(plan)
    if hit:
        return Check("source", CheckStatus.PASS, f"{hit[0].name} cached and verified ({hit[1].kind}) in {hit[0].parent}")
    if plan.offline:
        return Check("source", CheckStatus.FAIL, f"--offline and {plan.release.sdist.file} is not in {plan.workspace.downloads}",
                     f"run `./inv fetch` once with network or copy the file into {plan.workspace.downloads}/")
    settings = _http(timeout, plan)

    def reach(source) -> tuple[str | None, str]:
        if not (source.sha256 or source.tree_sha256):
            return None, f"{source.kind}: no checksum recorded"
        try:
            url = source.url
            if source.kind == "pypi-sdist":
                url = sdist_url_from_index(source.url, source.file, settings)
            with open_url(url, settings, {"Range": "bytes=0-0"}):
                pass
            return url, ""
        except Exception as exc:  # noqa: BLE001
            return None, f"{source.kind}: {_short(exc)}"

    # every source at once; the first reachable one in the plan's order wins
    with ThreadPoolExecutor(max_workers=max(1, len(plan.sources))) as pool:
        answers = list(pool.map(reach, plan.sources))
    tried = []
    for source, (url, why) in zip(plan.sources, answers, strict=True):
        if url:
            return Check("source", CheckStatus.PASS, f"{source.file} reachable at {redact_url(url)} ({source.kind})")
        tried.append(why)
    return Check("source", CheckStatus.FAIL, "release archive not cached and no source reachable: " + "; ".join(tried),
                 f"configure a reachable mirror (fetch.mirrors / pypi.index_url) or copy {plan.release.sdist.file} "
                 f"into {plan.workspace.downloads}/ and use --offline")


# ---------------------------------------------------------------------------------------------- runner
def host_python(plan: Plan) -> str:
    """The interpreter the existing backend (host-torch) builds over, as configured (not resolved)."""
    return plan.env.python_path or "python3"


def env_nvcc(plan: Plan, host_nvccs: list[NvccInfo] = (), root: Path = PROJECT_ROOT) -> NvccInfo | None:
    """The compiler the build uses when the env brings its own; None when it takes the host's (`host_nvccs`).

    Once the env exists, env.json says, as for the build's preflight. Before, the nvidia-cuda-nvcc its lock
    pins (CUDA >= 13 wheels, pypi-cu13); its gcc limit and archs are those of a host nvcc of the same CUDA
    release where there is one (the same compiler), else its archs are the release's it can build."""
    if plan.env.backend == "existing":
        return None
    try:
        info = envinfo.load(plan.workspace)
    except ProvisionError:
        info = None
    if info is not None:
        if not info.nvcc:
            return None
        return probe_nvcc(info.nvcc, "env") if os.path.exists(info.nvcc) else \
            NvccInfo(info.nvcc, "env", info.nvcc_version)
    if not plan.env.lock:
        return None
    try:
        pinned = lock.pinned(root / plan.env.lock).get("nvidia-cuda-nvcc")
    except OSError:
        return None
    version = parse_version(pinned) if pinned else None
    if version is None:
        return None
    cuda = f"{version.major}.{version.minor}"
    where = f"nvidia-cuda-nvcc {pinned} of {plan.env.lock}, installed by the env step"
    twin = next((n for n in host_nvccs if n.version == cuda), None)
    if twin is not None:
        return replace(twin, path=where, source="lock", top=None, include_dirs=())
    archs, _ = compilable_archs(plan.release.cuda_archs, cuda)   # CUDA's own floor, the plan's table
    return NvccInfo(where, "lock", cuda, archs=archs)


def gcc_check(cc_version: str | None, cc: str | None, nvcc: NvccInfo | None) -> Check:
    """The host compiler against nvcc's limit; a compiler the env step installs is read only once it is there."""
    check = check_gcc(cc_version, cc, nvcc)
    if nvcc is not None and nvcc.source == "lock" and check.status == CheckStatus.SKIP:
        return replace(check, detail=f"gcc {cc_version} ({cc}); the limit of nvcc {nvcc.version} is read once the "
                                     "env step has installed it (the build's preflight checks it)")
    return check


def torch_cuda_of_plan(plan: Plan, timeout: float) -> tuple[str | None, str | None, str]:
    """(torch version, its CUDA, where that came from) for the plan's profile."""
    if plan.env.backend == "existing":
        python = host_python(plan)
        torch = torch_of(python, timeout)
        if torch.version:
            return torch.version, torch.cuda, f"host {python}: torch {torch.version}"
        return None, None, torch.error or f"{python} has no torch"
    version, cuda = lock_torch(plan)
    cuda = plan.env.cuda or cuda
    src = f"lock torch {version}" if version else "profile env.cuda"
    return version, cuda, src if cuda else "no lock, env.cuda unset"


def run_doctor(plan: Plan, facts: HostFacts, *, timeout: float = DEFAULT_TIMEOUT,
               environ: Mapping[str, str] | None = None, toolchain: dict | None = None,
               gpus: dict | None = None) -> list[Check]:
    """All checks, in a fixed order; the slow ones run in parallel. `toolchain` (optional) receives
    what was found: nvcc, compiler, torch (for report.json's `toolchain` section); `gpus` (optional)
    receives the GPU section (count, memory held by other processes, link matrix)."""
    environ = os.environ if environ is None else environ
    indexes = [plan.env.index_url, *plan.env.extra_index_urls] if not plan.offline else []
    channels = list(plan.env.channels) if not plan.offline else []
    probe_timeout = max(timeout, 10.0)   # local commands: a cold python/nvcc start can take seconds
    with ThreadPoolExecutor(max_workers=8 + len(indexes) + len(channels)) as pool:
        f_torch = pool.submit(torch_cuda_of_plan, plan, probe_timeout)
        f_nvccs = pool.submit(nvcc_candidates, environ)
        cc = host_compiler(environ)
        f_ccv = pool.submit(compiler_version, cc) if cc else None
        f_index = [pool.submit(_guard, f"index {redact_url(u)}", check_index, u, plan, timeout) for u in indexes]
        f_chan = [pool.submit(_guard, f"channel {redact_url(u)}", check_channel, u, plan, timeout) for u in channels]
        f_source = pool.submit(_guard, "source", check_source, plan, timeout)
        f_links = pool.submit(probe_gpu_links, probe_timeout) if facts.gpus else None
        # the release's compiler floor (CMake-era releases name one); cmake is the env's, else the host's
        f_cmake = pool.submit(probe_cmake, str(envinfo.load(plan.workspace).python)
                              if envinfo.path(plan.workspace).is_file() else None, environ) \
            if plan.release.gcc_min or plan.release.cmake_min or plan.release.nvcc_min else None
        # the host's own torch (existing backend); what the toolkit installs into its own envs is compiled
        f_bytecode = pool.submit(bytecode_of, host_python(plan), "torch", probe_timeout) \
            if plan.env.backend == "existing" else None
        torch_version, torch_cuda, torch_from = f_torch.result()
        nvccs, homes = [], set()
        for n in f_nvccs.result():     # a wrapper script and its target are one toolkit
            home = Path(n.cuda_home).resolve()
            if home not in homes:
                homes.add(home)
                nvccs.append(n)
        # the env's own compiler (its lock's, or the existing env's) is the one the build uses, not the host's
        own = env_nvcc(plan, nvccs)
        nvcc_check, nvcc = check_nvcc([own] if own else nvccs, torch_cuda, torch_version, torch_from, plan)
        cc_version = f_ccv.result() if f_ccv else None
        if toolchain is not None:
            toolchain.update({"nvcc": nvcc.path if nvcc else None, "nvcc_version": nvcc.version if nvcc else None,
                              "cuda_home": nvcc.cuda_home if nvcc and nvcc.source != "lock" else None,
                              "compiler": f"{Path(cc).name} {cc_version}" if cc else None,
                              "torch": torch_version, "torch_cuda": torch_cuda, "torch_from": torch_from,
                              "lock": plan.env.lock})
        section = gpu_section(facts, *f_links.result()) if f_links else None
        if gpus is not None:
            gpus.update(section or gpu_section(facts, None, None))
        checks = [
            check_gpus(facts, plan, section),
            check_driver(facts, torch_cuda),
            nvcc_check,
            gcc_check(cc_version, cc, nvcc),
            check_ram(facts.mem_available_bytes, plan.build.max_jobs,
                      plan.build.job_peak_bytes * max(1, plan.build.nvcc_threads) or BUILD_JOB_PEAK_BYTES),
            check_disk(facts.disk_free_bytes, disk_needed(plan.env.backend, envinfo.path(plan.workspace).is_file()),
                       str(plan.workspace.root.parent)),
            check_archs(plan, facts, nvcc),
            *([check_torch_pin(plan.release, torch_version, f"host {host_python(plan)}"
                               if plan.env.backend == "existing" else f"the lock {plan.env.lock}")]
              if torch_version or plan.env.backend == "existing" else []),
            *([check_release_floor(plan.release, cc_version, f_cmake.result()[1], nvcc.version if nvcc else None,
                                   f_cmake.result()[0])] if f_cmake else []),
            *([check_bytecode(f_bytecode.result(), host_python(plan))] if f_bytecode else []),
            *[f.result() for f in f_index],
            *[f.result() for f in f_chan],
            f_source.result(),
        ]
    if plan.offline:
        checks.append(Check("mirrors", CheckStatus.SKIP, "--offline: no index or channel is contacted"))
    return checks


def _guard(name: str, func: Callable[..., Check], *args) -> Check:
    """A check that crashes is a failed check naming the error, never a traceback."""
    try:
        return func(*args)
    except Exception as exc:  # noqa: BLE001
        return Check(name, CheckStatus.FAIL, f"check crashed: {_short(exc)}", "report this as a vllm-provision bug")
