"""The settings schema: every key of vllm-provision.yaml with its type, checked once by config.resolve.

pydantic-settings reads the nested VLLMP_A__B variables (values stay strings; pydantic converts them to
each field's type); the description of a field is the form it takes, quoted by the error that rejects it.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict
from pydantic_settings.sources.utils import parse_env_vars

ENV_PREFIX = "VLLMP_"
TEMPLATE_FIELDS = ("file", "version")
# An external source's mirror: {repo} = owner/project as on GitHub, {owner}, {project}, {commit}, {name}.
EXTERNAL_TEMPLATE_FIELDS = ("repo", "owner", "project", "commit", "name")


def one_or_many(value: Any) -> Any:
    """A list setting given one value is a one-element list; `[a, b]` (JSON or bare items) is a list."""
    if value is None:
        return []
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not (text.startswith("[") and text.endswith("]")):
        return [text] if text else []
    try:
        return json.loads(text)
    except ValueError:   # bare items, e.g. [https://files.corp/vllm/{file}], which YAML/JSON cannot read
        return [item.strip().strip("'\"") for item in text[1:-1].split(",") if item.strip()]


def url(value: str) -> str:
    if "://" not in value:
        raise ValueError(f"{value!r} is not a URL (scheme://host/...)")
    return value


def _template(value: str, allowed: tuple[str, ...]) -> str:
    """Bare fields only: a conversion or format spec ({file!r}, {file:>30}) would change the URL (or, with a
    huge width, allocate gigabytes), so it is refused here rather than formatted."""
    try:
        fields = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(value)
                  if name is not None]
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a URL template ({exc}; write a literal brace as {{{{ or }}}})") from None
    names = ", ".join(f"{{{f}}}" for f in allowed)
    for name, spec, conversion in fields:
        if name not in allowed:
            raise ValueError(f"{value!r} uses {{{name}}}; a template may use only {names}")
        if spec or conversion:
            raise ValueError(f"{value!r} formats {{{name}}} ({'!' + conversion if conversion else ':' + spec}); "
                             f"a template may use only bare {names}")
    return url(value)


def url_template(value: str) -> str:
    return _template(value, TEMPLATE_FIELDS)


def external_template(value: str) -> str:
    """A tarball mirror (https://…, file://…) or, with a git+ prefix, a git mirror fetched by commit."""
    return _template(value, EXTERNAL_TEMPLATE_FIELDS)


def release_wheel_template(value: str) -> str:
    """The release's own wheel: the file name must stay a vLLM wheel's (`vllm-{version}-*.whl`)."""
    value = _template(value, ("version",))
    if not re.fullmatch(r"vllm-\{version\}-[^/]+\.whl", value.split("?", 1)[0].rsplit("/", 1)[-1]):
        raise ValueError(f"{value!r} does not end in a vLLM wheel's name, vllm-{{version}}-<tags>.whl")
    return value


def not_bool(value: Any) -> Any:
    if isinstance(value, bool):   # pydantic would take true as 1
        raise ValueError(f"{value!r} is not a whole number")
    return value


def auto_is_none(value: Any) -> Any:
    return None if value == "auto" else not_bool(value)


def arch_items(value: Any) -> Any:
    """`9.0`, `"8.0;9.0"`, `8.0,9.0`, `[8.0, 9.0]` -> ["8.0", "9.0"]."""
    items = one_or_many(value) if value is not None else None
    if not isinstance(items, list):
        return value
    out = []
    for item in items:
        text = str(item) if isinstance(item, (int, float, str)) and not isinstance(item, bool) else item
        out += text.replace(",", ";").replace(" ", ";").split(";") if isinstance(text, str) else [text]
    return [i for i in out if i != ""]


def arch(value: str) -> str:
    if not re.fullmatch(r"\d+\.\d+(\+PTX)?", value):
        raise ValueError(f"{value!r} is not a compute capability such as 9.0 or 9.0+PTX")
    return value


CACHE_KINDS = ("dir:PATH", "static:PATH", "static+https://HOST/PATH/", "pypi:https://HOST/")


def cache_entry(value: str) -> str:
    """An artifacts cache: dir:/srv/wheels, static:/srv/www/vllm, static+http(s)://host/path/, pypi:http(s)://host/."""
    kind, sep, rest = value.partition(":")
    if kind in ("dir", "static") and sep and rest.startswith(("/", "~")):
        return value
    if kind in ("static+http", "static+https") and rest.startswith("//") and len(rest) > 2:
        return value
    if kind == "pypi" and rest.startswith(("http://", "https://")):
        return value
    raise ValueError(f"{value!r} is not a cache entry: use {', '.join(CACHE_KINDS)} (paths absolute or ~)")


def artifact_key(value: Any) -> Any:
    if value is not None and not re.fullmatch(r"[0-9a-f]{64}", str(value)):
        raise ValueError(f"{value!r} is not an artifact key (64 lowercase hex digits, as `./inv wheel` prints)")
    return value


Strings = Annotated[list[str], BeforeValidator(one_or_many), Field(description="a list such as [a, b], or one value")]
Urls = Annotated[list[Annotated[str, AfterValidator(url)]], BeforeValidator(one_or_many),
                 Field(description="a list of URLs such as [https://host/simple], or one URL")]
Count = Annotated[Annotated[int, Field(ge=1)] | None, BeforeValidator(not_bool)]
AutoCount = Annotated[Annotated[int, Field(ge=1)] | None, BeforeValidator(auto_is_none)]
# A timeout or delay is finite and at most a week: inf, nan and 1e300 would overflow the sockets and
# subprocesses they reach (OverflowError inside a download), so the schema refuses them up front.
MAX_SECONDS = 7 * 24 * 3600
Seconds = Annotated[float, Field(gt=0, le=MAX_SECONDS, allow_inf_nan=False,
                                 description=f"seconds, a number > 0 and <= {MAX_SECONDS} (a week)")]
Tries = Annotated[int, BeforeValidator(not_bool), Field(ge=0, le=100, description="a whole number from 0 to 100")]
Flag = Annotated[bool, Field(description="true or false")]
Text = Annotated[str, Field(description='a string (quote numbers: "3.10")')]
OptionalText = Annotated[str | None, Field(description='null or a string (quote numbers: "12.1")')]


class Section(BaseModel):
    """Frozen: the validated settings travel as they are, read by attribute, never changed on the way."""
    model_config = ConfigDict(extra="forbid", frozen=True)


class Fetch(Section):
    mirrors: Annotated[list[Annotated[str, AfterValidator(url_template)]], BeforeValidator(one_or_many),
                       Field(description="a list of URL templates such as [https://files.corp/vllm/{file}] "
                                         "({file} and {version} only), or one template")]
    pypi_sdist: Flag
    github: Flag
    external_mirrors: Annotated[list[Annotated[str, AfterValidator(external_template)]], BeforeValidator(one_or_many),
                                Field(description="a list of templates for the build's external sources, tried "
                                                  "before GitHub: https://files.corp/gh/{repo}/{commit}.tar.gz or "
                                                  "git+https://git.corp/{owner}/{project}.git ({repo}, {owner}, "
                                                  "{project}, {commit}, {name})")]
    release_wheels: Annotated[list[Annotated[str, AfterValidator(release_wheel_template)]], BeforeValidator(one_or_many),
                              Field(description="a list of URL templates of the release's own wheel, such as "
                                                "[https://files.corp/vllm/vllm-{version}-cp38-abi3-manylinux_2_28_x86_64.whl] "
                                                "({version} only): copied externals are read from it after "
                                                "external_mirrors, before GitHub")]
    bundle: Annotated[str | None, Field(description="null or a source bundle (directory or .tar) written by "
                                                       "`./inv bundle`, imported into the cache before fetching")]
    timeout: Seconds
    retries: Tries
    backoff: Annotated[float, Field(ge=0, le=MAX_SECONDS, allow_inf_nan=False,
                                    description=f"seconds, a number >= 0 and <= {MAX_SECONDS}")]


class Pypi(Section):
    index_url: Annotated[str, AfterValidator(url), Field(description="a URL such as https://pypi.org/simple")]
    extra_index_urls: Urls
    trusted_hosts: Strings
    timeout: Seconds
    retries: Tries
    cert: Annotated[str | None, Field(description="null or the path of a CA bundle")]


class Conda(Section):
    channels: Strings
    override_channels: Flag


class Env(Section):
    backend: Annotated[Literal["conda", "venv", "existing"], Field(description="conda, venv or existing")]
    python: Text
    cuda: OptionalText
    installer: Annotated[Literal["auto", "uv", "pip"], Field(description="auto, uv or pip")]
    python_path: Annotated[str | None, Field(description="null or an interpreter (path or name)")]
    lock: Flag


class Build(Section):
    arch_list: Annotated[list[Annotated[str, AfterValidator(arch)]] | None, BeforeValidator(arch_items),
                         Field(description="null or compute capabilities such as 9.0 or [8.0, 9.0]")]
    max_jobs: Annotated[Count, Field(description="null (from free RAM and cores) or a whole number >= 1")]
    parallel_extensions: Flag
    ccache: Flag
    cpu_placement: Annotated[Literal["auto", "off"], Field(description="auto or off")]
    cpu_pool: Annotated[Count, Field(description="null (every CPU not reserved) or a whole number >= 1")]
    critical_unit_cores: Annotated[AutoCount, Field(description="auto or a whole number >= 1")]
    targets: Annotated[list[str], BeforeValidator(one_or_many),
                       Field(description="a list of CMake targets such as [_C, _moe_C], or one")]
    time_limit: Annotated[Annotated[float, Field(gt=0)] | None,
                          Field(description="null or seconds, a number > 0")]


class Smoke(Section):
    model: Annotated[str | None, Field(description="null or a local model directory")]
    max_model_len: Annotated[Count, Field(description="null or a whole number >= 1")]
    gpu_memory_utilization: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False,
                                                   description="a number > 0 and <= 1")]
    parity: Flag
    all_gpus: Flag


class AllowedPipCheck(Section):
    package: Text
    requires: Text
    reason: Text
    profiles: Annotated[list[str] | None, BeforeValidator(one_or_many),
                        Field(description="a list of profiles, or one profile")] = None


class Verify(Section):
    allowed_pip_check: Annotated[list[AllowedPipCheck],
                                 Field(description="a list of {package, requires, reason, profiles?}")]
    import_timeout: Seconds


CacheEntry = Annotated[str, AfterValidator(cache_entry),
                      Field(description=f"a cache: {', '.join(CACHE_KINDS)} (paths absolute or ~)")]


class Artifacts(Section):
    caches: Annotated[list[CacheEntry], BeforeValidator(one_or_many),
                      Field(description="a list of caches such as [dir:/srv/vllm-wheels, static:/srv/www/vllm, "
                                        "static+https://host/vllm/, pypi:https://user@host/], or one")]
    push: Flag
    require_cache: Flag
    key: Annotated[str | None, AfterValidator(artifact_key),
                   Field(description="null or a key of 64 hex digits, as `./inv wheel` prints")]


Forks = Annotated[int, BeforeValidator(not_bool), Field(ge=1, description="a whole number >= 1")]
Percent = Annotated[float, Field(ge=0, le=100, allow_inf_nan=False, description="a percentage from 0 to 100")]
HostKeyPolicy = Annotated[Literal["strict", "accept-new"], Field(description="strict or accept-new")]


class Fleet(Section):
    forks: Forks
    max_fail_percent: Percent
    host_key_policy: HostKeyPolicy
    known_hosts: Text
    ssh_config: Text
    connect_timeout: Seconds
    facts_timeout: Seconds
    build_timeout: Seconds
    install_timeout: Seconds
    remote_dir: Text
    toolkit_command: Text
    report_dir: Text


class Settings(BaseSettings):
    """No defaults here: the defaults file gives every value, so a key it lacks is an error naming it."""

    model_config = SettingsConfigDict(extra="forbid", frozen=True, env_prefix=ENV_PREFIX, env_nested_delimiter="__",
                                      enable_decoding=False, env_parse_none_str="null")
    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, **others):
        """Only the merged layers config.resolve passes in; it reads the environment itself."""
        return (init_settings,)

    release: Text
    profile: Annotated[str, Field(description="a profile name in envs/")]
    cache_dir: Text
    workspace_root: Text
    offline: Flag
    fetch: Fetch
    pypi: Pypi
    conda: Conda
    env: Env
    build: Build
    smoke: Smoke
    verify: Verify
    artifacts: Artifacts
    fleet: Fleet


class EnvironmentSource(EnvSettingsSource):
    """pydantic-settings' reader of VLLMP_A__B variables, over a given mapping rather than os.environ."""

    def __init__(self, environ: Mapping[str, str]):
        self._environ = environ
        super().__init__(Settings)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)


def from_environment(environ: Mapping[str, str]) -> dict:
    """VLLMP_FETCH__TIMEOUT=5 -> {"fetch": {"timeout": "5"}} (strings; the schema converts them)."""
    return EnvironmentSource(environ)()


def field_of(path: tuple[str, ...]):
    """The FieldInfo of a dotted setting, or None (a key the schema does not have)."""
    model, info = Settings, None
    for part in path:
        fields = getattr(model, "model_fields", {})
        if part not in fields:
            return None
        info = fields[part]
        model = info.annotation
    return info
