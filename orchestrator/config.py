"""Configuration: defaults < ``config.toml`` < environment < command-line flags.

Every value remembers where it came from, so that a bad one is reported as
``TEST_TIMEOUT (environment): must be a whole number of milliseconds > 0; got 'soon'``
instead of a traceback. The plan's variables keep their names and units
(milliseconds); the orchestrator's own settings use an ``ORCHESTRATOR_`` prefix.

The bearer token is never a flag (flags show up in ``ps``) and never printed:
it comes from ``KUBEFOUNDRY_TOKEN`` or from a file, and is held as a
``SecretStr``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

# The keys and the error live apart from the models, without pydantic, so that
# ``--help`` and ``--version`` can build the parser without importing it.
from ._keys import BOOLEAN_KEYS as BOOLEAN_KEYS
from ._keys import CONFIG_ENV as CONFIG_ENV
from ._keys import DEFAULT_CONFIG_FILE as DEFAULT_CONFIG_FILE
from ._keys import KEY_ALIASES as KEY_ALIASES
from ._keys import KEYS as KEYS
from ._keys import KEYS_BY_NAME as KEYS_BY_NAME
from ._keys import TOKEN_ENV as TOKEN_ENV
from ._keys import ConfigError as ConfigError
from ._keys import Key as Key
from ._shard import parse_shard, select_shard

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
#: A flow's name (``kaito``, ``my-flow``) or a ``module:factory`` path.
FLOW_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
FLOW_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
#: A catalog id (``llama3.2:1b``) or a Hugging Face repository id (``Qwen/Qwen2.5-0.5B``).
MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")


Milliseconds = int
#: No run, phase or wait takes longer than a day: a bigger number is a typo (seconds
#: taken for milliseconds twice over) that would make a stuck run hold CI forever.
MAX_MILLISECONDS = 86_400_000
#: The shortest safety re-check while watching. Below a second it stops being a safety net
#: and becomes a poll of the backend (and the Kubernetes reads behind its answer) many
#: times a second for every waiting flow; ``wait_strategy = "poll"`` is the honest way
#: to ask that often.
MIN_RECHECK_MILLISECONDS = 1_000
#: What a bearer token may hold to be sent in an HTTP header: visible ASCII, no space.
#: Anything else (a newline from a file, a non-ASCII character) would break the request
#: or, worse, let the value add a header of its own.
HEADER_SAFE = re.compile(r"^[\x21-\x7e]+$")
TOKEN_MAX = 16_384


class DeploymentSpec(BaseModel):
    """One deployment of a multi-deployment run; unset fields take the run's values."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = None
    model: str | None = None
    namespace: str | None = None
    replicas: int = Field(1, ge=1, le=10)
    #: The provider this deployment is for (None: every provider the run tests).
    provider: str | None = None

    @field_validator("provider")
    @classmethod
    def _provider(cls, v: str | None) -> str | None:
        if v is not None and not FLOW_NAME.match(v):
            raise ValueError(f"{v!r} is not a provider name (kaito, kuberay, dynamo)")
        return v

    @field_validator("name", "namespace")
    @classmethod
    def _dns(cls, v: str | None) -> str | None:
        return None if v is None else _dns_label(v)

    @field_validator("model")
    @classmethod
    def _model(cls, v: str | None) -> str | None:
        return None if v is None else _model_id(v)


@dataclass(frozen=True)
class Target:
    """A deployment this run will make: its name, and what the configuration says of its
    model, namespace and replicas (None: the provider's default)."""

    name: str
    model: str | None
    namespace: str | None
    replicas: int = 1
    #: The provider (flow) this deployment is for; None: every flow of the run.
    provider: str | None = None


def base_url(v: str) -> str:
    """An http(s) base URL with a valid host and port, nothing a request would choke on
    later, and no credentials in it (they would show in every log line naming the URL)."""
    text = v.strip()
    if any(ch.isspace() or not ch.isprintable() for ch in text):
        raise ValueError("must be a URL without spaces or control characters")
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError("must start with http:// or https://")
    host = parts.hostname
    if not host:
        raise ValueError("must name a host, e.g. http://localhost:3001")
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            f"must not hold credentials (user:password@); set {TOKEN_ENV} or token_file"
        )
    if port == 0:
        raise ValueError("port must be between 1 and 65535")
    if not _valid_host(host):
        raise ValueError(f"host {host!r} is not a valid host name or IP address")
    if parts.query or parts.fragment:
        raise ValueError("must be a base URL, without '?query' or '#fragment'")
    return text.rstrip("/")


def _hide_userinfo(url: str) -> str:
    """``http://user:pw@host`` as ``http://***@host``: an error must not print a password."""
    return re.sub(r"(?<=://)[^/@\s]*@", "***@", url)


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    labels = host.rstrip(".").split(".")
    return len(host) <= 253 and all(
        re.fullmatch(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?", label) for label in labels
    )


def check_token(value: str) -> None:
    """A bearer token that can go into an Authorization header as it is."""
    if len(value) > TOKEN_MAX:
        raise ValueError(f"is longer than {TOKEN_MAX} characters")
    if not HEADER_SAFE.match(value):
        raise ValueError(
            "may hold only visible ASCII characters (no spaces, line breaks or "
            "non-ASCII): it is sent in an HTTP header"
        )


def _dns_label(v: str) -> str:
    if len(v) > 63 or not DNS_LABEL.match(v):
        raise ValueError(
            "must be a DNS-1123 label: at most 63 characters, lower-case letters, "
            "digits and '-', starting and ending with a letter or digit"
        )
    return v


def _model_id(v: str) -> str:
    if not MODEL_ID.match(v):
        raise ValueError(
            "must be a catalog model id such as 'llama3.2:1b' or a Hugging Face repository "
            "id such as 'Qwen/Qwen2.5-0.5B-Instruct' (letters, digits, '.', '_', ':', '-', "
            "one '/')"
        )
    return v


class Settings(BaseModel):
    """The validated configuration. Durations are milliseconds, as the plan has them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    api_url: str = "http://localhost:3001"
    test_timeout: Milliseconds = Field(600_000, gt=0, le=MAX_MILLISECONDS)
    #: The KubeFoundry provider(s) to test: each is the built-in flow of that name.
    #: None: kaito, unless ``[[deployments]]`` tables name their providers.
    provider: str | None = None
    #: Flows to run instead of the providers' (names or module:factory paths).
    flow: str | None = None
    install_timeout: Milliseconds = Field(180_000, gt=0, le=MAX_MILLISECONDS)
    deploy_timeout: Milliseconds = Field(60_000, gt=0, le=MAX_MILLISECONDS)
    deployment_ready_timeout: Milliseconds = Field(300_000, gt=0, le=MAX_MILLISECONDS)
    inference_timeout: Milliseconds = Field(120_000, gt=0, le=MAX_MILLISECONDS)
    delete_timeout: Milliseconds = Field(120_000, gt=0, le=MAX_MILLISECONDS)
    #: None: the smaller of 60 s and a quarter of the budget.
    cleanup_reserve: Milliseconds | None = Field(None, ge=0, le=MAX_MILLISECONDS)
    #: None: the provider's own default (KAITO: llama3.2:1b in kaito-workspace).
    model: str | None = None
    kubeconfig: str | None = None
    namespace: str | None = None
    deployment_name: str = "integration-test-llama"
    artifacts_dir: str = "test-results"
    token_file: str | None = None
    inference: str = "service-proxy"
    cleanup: Literal["auto", "always", "on-success", "never"] = "auto"
    wait_strategy: Literal["watch", "poll"] = "watch"
    poll_interval: Milliseconds = Field(5_000, gt=0, le=3_600_000)
    #: While watching, the wait asks its authority again after this long without an event:
    #: watches bring every change within milliseconds, so this only covers a watch that
    #: stalls without an error and a change that no Kubernetes object shows.
    recheck_interval: Milliseconds = 30_000
    credential_timeout: Milliseconds = Field(30_000, gt=0, le=600_000)
    #: How long "nothing listens at api_url" may last before the run gives up, at its start:
    #: longer than a backend restart (about 7 s), far shorter than the Install phase's deadline.
    backend_wait: Milliseconds = Field(10_000, gt=0, le=600_000)
    parallel: int = Field(1, ge=1, le=200)
    unique_names: bool = False
    #: ``INDEX/COUNT``: run only this CI job's part of the deployments.
    shard: str | None = None
    #: A finding (the backend contradicting the cluster) fails the phase that made it.
    strict: bool = False
    latency_regression: float | None = Field(None, gt=0, le=100_000, allow_inf_nan=False)
    #: Off by default: a model's words are not stable, so only its user can say which
    #: answer (to which prompt, at temperature 0) proves the right model is serving.
    inference_expect: str | None = None
    inference_expect_prompt: str = Field(
        "What is the capital of France? Answer with one word.", min_length=1, max_length=4000
    )
    chaos: bool = False
    deployments: list[DeploymentSpec] = Field(default_factory=list, max_length=200)
    #: The tables of config.toml named after a flow (``[kaito]``): that flow's options.
    flow_options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    token: SecretStr | None = Field(default=None, repr=False)

    @field_validator(
        "test_timeout",
        "install_timeout",
        "deploy_timeout",
        "deployment_ready_timeout",
        "inference_timeout",
        "delete_timeout",
        "cleanup_reserve",
        "credential_timeout",
        "backend_wait",
        "poll_interval",
        "recheck_interval",
        mode="before",
    )
    @classmethod
    def _milliseconds(cls, v: Any) -> Any:
        """Whole milliseconds, from TOML integers or environment/flag strings; never a bool or float."""
        if v is None:
            return v
        if isinstance(v, str) and re.fullmatch(r"\s*\d+\s*", v):
            return int(v)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
        raise ValueError("must be a whole number of milliseconds")

    @field_validator("recheck_interval")
    @classmethod
    def _recheck(cls, v: int) -> int:
        if v < MIN_RECHECK_MILLISECONDS:
            raise ValueError(
                f"must be at least {MIN_RECHECK_MILLISECONDS} ms: it is a safety net, not a "
                "poll (to ask the backend that often, set wait_strategy to poll)"
            )
        if v > 3_600_000:
            raise ValueError("must be at most 3600000 ms (an hour)")
        return v

    @field_validator("api_url")
    @classmethod
    def _url(cls, v: str) -> str:
        return base_url(v)

    @field_validator("token")
    @classmethod
    def _token(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None:
            check_token(v.get_secret_value())
        return v

    @field_validator("namespace", "deployment_name")
    @classmethod
    def _dns_label(cls, v: str | None) -> str | None:
        return None if v is None else _dns_label(v)

    @field_validator("model")
    @classmethod
    def _model(cls, v: str | None) -> str | None:
        return None if v is None else _model_id(v)

    @field_validator("provider", "flow")
    @classmethod
    def _flows(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        names = [n.strip() for n in v.split(",")]
        for name in names:
            if not (FLOW_NAME.match(name) or FLOW_PATH.match(name)):
                raise ValueError(
                    f"{name!r} is not a flow name (lower-case letters, digits, '-', '_') "
                    "or a module:factory path"
                )
        if len(set(names)) != len(names):
            raise ValueError("names a flow twice")
        return ",".join(names)

    def flow_names(self) -> list[str]:
        """The flows this run runs: ``flow`` when set, else one per ``provider``, and one
        per provider a ``[[deployments]]`` table names."""
        if self.flow:
            return self.flow.split(",")
        named = [d.provider for d in self.deployments if d.provider]
        if self.provider:
            chosen = self.provider.split(",")
        else:
            chosen = [] if named else ["kaito"]
        return list(dict.fromkeys([*chosen, *named]))

    @field_validator("deployments", mode="before")
    @classmethod
    def _specs(cls, v: Any) -> Any:
        """Flags give ``name=a,model=b`` strings; the file gives tables."""
        if not isinstance(v, list):
            raise ValueError("must be a list of deployments ([[deployments]] tables)")
        out = []
        for item in v:
            if isinstance(item, str):
                fields: dict[str, str] = {}
                for part in filter(None, item.split(",")):
                    key, sep, val = part.partition("=")
                    if not sep:
                        raise ValueError(f"{item!r}: expected key=value pairs separated by ','")
                    fields[key.strip()] = val.strip()
                out.append(fields)
            else:
                out.append(item)
        return out

    @field_validator("inference_expect")
    @classmethod
    def _pattern(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"must be a regular expression (Python re syntax): {exc}") from None
        return v

    @field_validator("shard")
    @classmethod
    def _shard(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        index, count = parse_shard(v)
        return f"{index}/{count}"

    @field_validator("unique_names", "chaos", "strict", mode="before")
    @classmethod
    def _bool(cls, v: Any) -> Any:
        if isinstance(v, str):
            low = v.strip().lower()
            if low in ("true", "1", "yes", "on"):
                return True
            if low in ("false", "0", "no", "off"):
                return False
            raise ValueError("must be true or false")
        return v

    def targets(self, run_id: str) -> list[Target]:
        """The deployments this run makes, with names made unique per run when needed.

        Two CI jobs on one cluster must not collide, so a run of several
        deployments (or one asked for ``unique_names``) suffixes each name with
        the run id, shortening the base name to stay a valid 63-character label.
        """
        specs = list(self.deployments) or [DeploymentSpec() for _ in range(self.parallel)]
        unique = self.unique_names or len(specs) > 1
        # Without --flow, a deployment that names no provider is made once per provider,
        # so that a shard is a part of what the run as a whole would make.
        providers = [None] if self.flow else self.flow_names()
        out = []
        for i, spec in enumerate(specs, start=1):
            name = spec.name or self.deployment_name
            if unique:
                tail = f"-{run_id}" + (f"-{i}" if not spec.name and len(specs) > 1 else "")
                name = name[: 63 - len(tail)].rstrip("-") + tail
            for provider in [spec.provider] if spec.provider else providers:
                out.append(
                    Target(
                        name,
                        spec.model or self.model,
                        spec.namespace or self.namespace,
                        spec.replicas,
                        provider,
                    )
                )
        if self.shard:
            index, count = parse_shard(self.shard)
            out = select_shard(out, index, count)
        return out

    @field_validator("inference")
    @classmethod
    def _inference(cls, v: str) -> str:
        if v in ("service-proxy", "backend-proxy"):
            return v
        if "://" not in v:
            raise ValueError("must be 'service-proxy', 'backend-proxy' or an http(s):// base URL")
        return base_url(v)

    @field_validator("kubeconfig", "token_file")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            return None
        return v

    def seconds(self, key: str) -> float:
        if key == "cleanup_reserve" and self.cleanup_reserve is None:
            return min(60.0, self.test_timeout / 4000.0)
        return float(getattr(self, key)) / 1000.0

    def cleanup_policy(
        self, environ: Mapping[str, str] | None = None
    ) -> Literal["always", "on-success", "never"]:
        """``auto`` means: always in CI (``CI`` set), keep resources on failure elsewhere."""
        if self.cleanup != "auto":
            return self.cleanup
        env = os.environ if environ is None else environ
        return "always" if env.get("CI", "").lower() not in ("", "0", "false") else "on-success"

    def public(self) -> dict[str, Any]:
        """The settings as they may be shown or written: never the token."""
        data = self.model_dump(exclude={"token"})
        data["token"] = "(set)" if self.token else "(not set)"
        return data


def _describe(source: str, key: str) -> str:
    k = KEYS_BY_NAME.get(key)
    if source == "environment" and k and k.env:
        return f"{k.env} (environment)"
    if source == "flag" and k and k.flag:
        return f"{k.flag} (command line)"
    if source.startswith("file:"):
        return f"{key} ({source[5:]})"
    return f"{key} ({source})"


def _read_file(path: Path, explicit: bool) -> dict[str, Any]:
    """The file's settings, keys under their current names; its flow tables under
    ``flow_options``. A missing default file is no file; a missing named one is an error."""
    if not path.exists():
        if explicit:
            raise ConfigError([f"{path}: configuration file not found"])
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot be read: {exc}"]) from None
    problems: list[str] = []
    out: dict[str, Any] = {}
    tables: dict[str, dict[str, Any]] = {}
    for key, value in data.items():
        name = KEY_ALIASES.get(key, key)
        problem = _file_entry_problem(path, name, value)
        if problem:
            problems.append(problem)
        elif name in KEYS_BY_NAME:
            out[name] = value
        else:
            tables[key] = value
    if problems:
        raise ConfigError(problems)
    if tables:
        out["flow_options"] = tables
    return out


def _file_entry_problem(path: Path, key: str, value: Any) -> str | None:
    """What is wrong with one top-level entry of the file, if anything."""
    if key == "token":
        return f"{path}: 'token' may not be written in a file; set {TOKEN_ENV} or token_file"
    if key not in KEYS_BY_NAME:
        if isinstance(value, dict) and FLOW_NAME.match(key):
            return _flow_table_problem(path, key, value)
        return f"{path}: unknown key '{key}' (known keys: {', '.join(sorted(KEYS_BY_NAME))})"
    if key == "deployments":
        if not isinstance(value, list):
            return f"deployments ({path.name}): must be [[deployments]] tables"
        return None
    if isinstance(value, (dict, list)):
        return f"{key} ({path.name}): must be a single value, not a {type(value).__name__}"
    return None


def _flow_table_problem(path: Path, flow: str, table: dict[str, Any]) -> str | None:
    """A flow's table (``[kaito]``) holds single values: the flow's own options."""
    for key, value in table.items():
        if isinstance(value, (dict, list)):
            return (
                f"[{flow}].{key} ({path.name}): must be a single value, not a "
                f"{type(value).__name__}"
            )
    return None


def _config_path(
    config_file: str | None, env: Mapping[str, str], cwd: Path | None
) -> tuple[Path, bool]:
    """The configuration file to read, and whether it was named (so must exist)."""
    explicit = config_file is not None or CONFIG_ENV in env
    path = Path(config_file or env.get(CONFIG_ENV) or DEFAULT_CONFIG_FILE)
    if not path.is_absolute():
        path = (cwd or Path.cwd()) / path
    return path, explicit


def _merge(
    path: Path, explicit: bool, env: Mapping[str, str], flags: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, str]]:
    """Every source's values, later sources winning, and where each value came from."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key, value in _read_file(path, explicit).items():
        values[key], sources[key] = value, f"file:{path.name}"
    for k in KEYS:
        if k.env and k.env in env and env[k.env] != "":
            values[k.name], sources[k.name] = env[k.env], "environment"
    for key, value in flags.items():
        if key not in KEYS_BY_NAME:
            raise ConfigError([f"internal: unknown flag key {key!r}"])
        if key == "deployments" and not value:
            continue
        values[key], sources[key] = value, "flag"
    return values, sources


def _read_token(
    values: dict[str, Any], sources: Mapping[str, str], env: Mapping[str, str]
) -> tuple[str, list[str]]:
    """Put the bearer token (environment, or token_file) into ``values``; return where it
    came from (for messages) and the problems reading it."""
    token = env.get(TOKEN_ENV) or None
    token_source = f"{TOKEN_ENV} (environment)"
    problems: list[str] = []
    token_file = values.get("token_file")
    if token_file and isinstance(token_file, str):
        where = _describe(sources["token_file"], "token_file")
        token_source = f"the token file {token_file} ({where})"
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip() or None
        except OSError as exc:
            problems.append(f"{where}: cannot read the token file: {exc.strerror or exc}")
        if token is None and not problems:
            problems.append(f"{where}: the token file is empty")
    if token is not None:
        values["token"] = token
    return token_source, problems


def _validation_problem(
    err: Any, values: Mapping[str, Any], sources: Mapping[str, str], token_source: str
) -> str:
    """One line for one pydantic error: which key, from which source, what is wrong."""
    key = str(err["loc"][0]) if err["loc"] else "(config)"
    got = values.get(key)
    msg = err["msg"].removeprefix("Value error, ")
    if isinstance(got, str) and "@" in got:
        got = _hide_userinfo(got)
    shown = "" if key == "token" else f"; got {got!r}"
    where = token_source if key == "token" else _describe(sources.get(key, "default"), key)
    if key in ("deployments", "flow_options") and len(err["loc"]) > 1:
        index, *rest = err["loc"][1:]
        sub = f"[{index}]" + "".join(f".{p}" for p in rest)
        shown = f"; got {err.get('input')!r}"
        where = f"{key}{sub} ({sources.get(key, 'default').removeprefix('file:')})"
    return f"{where}: {msg}{shown}"


def _cross_checks(settings: Settings, sources: Mapping[str, str]) -> list[str]:
    """What no single value shows: a name twice in a namespace, a reserve above the budget."""
    # One name per namespace and provider: the same name under two providers is two
    # custom resources of different kinds (and, by default, in different namespaces).
    names = [(t.namespace, t.name, t.provider) for t in settings.targets("x")]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        where = sources.get("deployments", "default").removeprefix("file:")
        ns = f"namespace {dup[0]!r}" if dup[0] else "the provider's namespace"
        return [f"deployments ({where}): the name {dup[1]!r} appears twice in {ns}"]
    if settings.cleanup_reserve is not None and settings.cleanup_reserve >= settings.test_timeout:
        where = _describe(sources.get("cleanup_reserve", "default"), "cleanup_reserve")
        return [
            f"{where}: must be less than test_timeout ({settings.test_timeout} ms); "
            f"got {settings.cleanup_reserve}"
        ]
    return []


def load_settings(
    flags: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    config_file: str | None = None,
    cwd: Path | None = None,
) -> Settings:
    """Merge the sources and validate once; report every bad value with its source."""
    env = dict(os.environ if environ is None else environ)
    given = {k: v for k, v in (flags or {}).items() if v is not None}
    path, explicit = _config_path(config_file, env, cwd)
    values, sources = _merge(path, explicit, env, given)
    token_source, problems = _read_token(values, sources, env)
    try:
        settings = Settings.model_validate(values)
    except ValidationError as exc:
        problems += [_validation_problem(e, values, sources, token_source) for e in exc.errors()]
    if problems:
        raise ConfigError(problems)
    problems = _cross_checks(settings, sources)
    if problems:
        raise ConfigError(problems)
    return settings
