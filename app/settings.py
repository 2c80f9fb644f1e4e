"""The gateway's configuration: one pydantic-settings object, from a YAML file plus `GATEWAY_*`.

Precedence, highest first: environment variables (`GATEWAY_PORT`, `GATEWAY_TIMEOUTS__CONNECT`,
`GATEWAY_BACKENDS='[...]'` as JSON), then the YAML file named by `--config` or `GATEWAY_CONFIG`,
then the defaults below. Every mistake is reported with the dotted key that holds it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from .planner.sizes import SIZE_HELP, parse_size

if TYPE_CHECKING:
    from .residency.budget import Budget

DEFAULT_LAUNCH_COMMAND = ["vllm", "serve", "{model}"]
# How long a vLLM server keeps an idle HTTP connection open: its uvicorn's `timeout_keep_alive`,
# set by this environment variable (vLLM's default: 5 s). The gateway keeps its idle connections
# to a backend one second less, so it never reuses one the server is closing.
KEEP_ALIVE_ENV = "VLLM_HTTP_TIMEOUT_KEEP_ALIVE"
VLLM_KEEP_ALIVE = 5
DEFAULT_WAKE_TIMEOUT = 120.0  # seconds for a sleep-mode wake (weights back from host RAM) when not configured
LAUNCHED_KEEP_ALIVE = 60  # asked of the processes the gateway launches: a pause under a minute costs no reconnects


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Timeouts(_Strict):
    """Seconds. `response_head` waits for the status line (a non-streaming generation sends
    nothing until it is done); `stream_idle` is the longest gap between two chunks."""

    connect: float = Field(5.0, gt=0)
    response_head: float = Field(600.0, gt=0)
    stream_idle: float = Field(300.0, gt=0)
    total: float | None = Field(None, gt=0)


class TimeoutOverrides(_Strict):
    connect: float | None = Field(None, gt=0)
    response_head: float | None = Field(None, gt=0)
    stream_idle: float | None = Field(None, gt=0)
    total: float | None = Field(None, gt=0)


class Retries(_Strict):
    """Only failures that are safe to retry: no connection, or a 503 before any byte was sent."""

    attempts: int = Field(2, ge=1, le=10)
    backoff_initial: float = Field(0.1, ge=0)
    backoff_max: float = Field(2.0, ge=0)
    max_wait: float = Field(10.0, ge=0)


class CircuitBreaker(_Strict):
    failure_threshold: int = Field(3, ge=1)
    reset_timeout: float = Field(5.0, gt=0)


class Cors(_Strict):
    allow_origins: list[str] = []
    allow_methods: list[str] = ["GET", "POST", "OPTIONS"]
    allow_headers: list[str] = ["*"]
    allow_credentials: bool = False


class GpuConfig(_Strict):
    memory_budget: float = Field(0.90, gt=0, le=1.0)
    # Each GPU's total memory, for `vllm-gateway plan` and the start-up plan where NVML cannot tell
    # (no GPU here, or planning for another machine): 48GB, 45GiB, 45.5G or a number of bytes.
    memory: int | None = None
    # On-demand residency: the longest the awake models' traffic may keep a waiting model's swap back.
    max_swap_delay: float = Field(10.0, ge=0)

    @field_validator("memory", mode="before")
    @classmethod
    def _memory_size(cls, value: Any) -> Any:
        if value is None:
            return None
        try:
            return parse_size(value)
        except ValueError as exc:
            raise ValueError(f"gpu.memory: {exc}; expected {SIZE_HELP}") from None


class UiConfig(_Strict):
    """The operator page (`app/ui`): on by default; its rings are bounded by these sizes."""

    enabled: bool = True
    activity: int = Field(500, ge=10, le=100_000)  # requests kept for the Activity list
    log_lines: int = Field(1000, ge=10, le=100_000)  # lines kept per source (each backend, the gateway)


class LaunchConfig(_Strict):
    """How the gateway starts this backend's vLLM process (absent: the backend is external)."""

    model: str
    command: list[str] = Field(default_factory=lambda: list(DEFAULT_LAUNCH_COMMAND))
    # A fraction of the GPU's total, or `auto`: the planner computes it (app/planner) from the model's
    # files for `max_model_len` and one of the two targets below.
    gpu_memory_utilization: float | Literal["auto"] | None = None
    max_model_len: int | None = Field(None, gt=0)
    concurrent_sequences: int | None = Field(None, ge=1)  # auto: this many max_model_len sequences at once
    kv_cache_tokens: int | None = Field(None, ge=1)  # auto: a KV cache of this many tokens
    args: list[str] = []
    env: dict[str, str] = {}
    warmup: bool = False
    ready_timeout: float = Field(1800.0, gt=0)
    stop_timeout: float = Field(20.0, gt=0)
    restart_backoff_initial: float = Field(1.0, ge=0)
    restart_backoff_max: float = Field(60.0, ge=0)
    unhealthy_restart_after: float = Field(60.0, ge=0)  # 0: a running process is never restarted for /health
    max_restarts: int = Field(0, ge=0)  # restarts in a row before giving up; 0: never give up
    log_file: str | None = None
    # On-demand residency (app/residency): asleep until a request needs it, within gpu.memory_budget.
    residency: Literal["always", "on_demand"] = "always"
    swap: Literal["sleep", "restart"] = "sleep"  # sleep: vLLM's sleep mode; restart: stop and start the process
    sleep_level: Literal[1, 2] = 1
    min_awake: float = Field(10.0, ge=0)  # seconds a woken backend that served stays awake before it may sleep
    idle_sleep: float | None = Field(None, gt=0)  # sleep by itself after this many idle seconds
    drain_timeout: float = Field(30.0, ge=0)  # in-flight requests may finish this long before a sleep
    wake_timeout: float | None = Field(None, gt=0)  # one wake (or sleep call); default 120 s, restart: ready_timeout
    max_wait: float = Field(120.0, gt=0)  # a request waits this long for a wake, then 503

    @field_validator("command")
    @classmethod
    def _command_not_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("launch.command must name a program")
        return value

    @field_validator("env", mode="before")
    @classmethod
    def _env_as_strings(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {str(k): str(v) for k, v in value.items()}
        return value

    @field_validator("gpu_memory_utilization", mode="before")
    @classmethod
    def _share_or_auto(cls, value: Any) -> Any:
        if value is None or value == "auto":
            return value
        try:
            share = float(value)
        except (TypeError, ValueError):
            share = float("nan")
        if isinstance(value, bool) or not 0 < share <= 1:
            raise ValueError(f"gpu_memory_utilization must be a fraction of the GPU's total above 0 and at most 1, "
                             f"or auto (got {value!r})")
        return share

    @model_validator(mode="after")
    def _residency_keys(self) -> LaunchConfig:
        on_demand_only = ("swap", "sleep_level", "min_awake", "idle_sleep", "drain_timeout", "wake_timeout", "max_wait")
        if self.residency == "always":
            given = [key for key in on_demand_only if key in self.model_fields_set]
            if given:
                raise ValueError(f"launch.{given[0]} applies only to `residency: on_demand`; set that too, or drop it")
            return self
        if self.gpu_memory_utilization is None:
            raise ValueError("residency: on_demand needs gpu_memory_utilization (a fraction, or auto): the gateway "
                             "decides from the shares which backends may be awake together")
        if self.swap == "restart" and "sleep_level" in self.model_fields_set:
            raise ValueError("launch.sleep_level is for `swap: sleep`; `swap: restart` stops the process instead")
        return self

    @property
    def on_demand(self) -> bool:
        return self.residency == "on_demand"

    @property
    def effective_wake_timeout(self) -> float:
        """How long one wake may take: `wake_timeout`, else 120 s for a sleep-mode wake and the
        load itself (`ready_timeout`) for a restart."""
        if self.wake_timeout is not None:
            return self.wake_timeout
        return self.ready_timeout if self.swap == "restart" else DEFAULT_WAKE_TIMEOUT

    @model_validator(mode="after")
    def _planned_targets(self) -> LaunchConfig:
        targets = [k for k in ("concurrent_sequences", "kv_cache_tokens") if getattr(self, k) is not None]
        if self.gpu_memory_utilization != "auto":
            if targets:
                raise ValueError(f"{targets[0]} is a target for gpu_memory_utilization: auto; set that, "
                                 f"or drop {targets[0]} and keep the fraction")
            return self
        if self.max_model_len is None:
            raise ValueError("gpu_memory_utilization: auto needs max_model_len (the planner sizes the KV cache "
                             "for sequences of that length)")
        if len(targets) != 1:
            raise ValueError("gpu_memory_utilization: auto needs exactly one target: concurrent_sequences "
                             "(sequences of max_model_len at once) or kv_cache_tokens")
        owned = [a.split("=", 1)[0] for a in self.args
                 if a.split("=", 1)[0] in ("--gpu-memory-utilization", "--kv-cache-memory-bytes", "--kv-cache-memory")]
        if owned:
            raise ValueError(f"gpu_memory_utilization: auto computes {owned[0]} itself; remove it from launch.args")
        return self


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


class BackendConfig(_Strict):
    name: str
    url: str | None = None
    urls: list[str] = []
    models: list[str] = []
    aliases: list[str] = []
    api_key: SecretStr | None = None
    timeouts: TimeoutOverrides = TimeoutOverrides()
    max_concurrency: int | None = Field(None, ge=1)
    max_queue: int = Field(100, ge=0)
    queue_timeout: float = Field(30.0, gt=0)
    keep_alive: int | None = Field(None, ge=2)
    launch: LaunchConfig | None = None
    # LoRA adapters the gateway loads on first use (`app/adapters`): name clients use -> folder or hf:org/name.
    adapters: dict[str, str] = {}
    max_loaded_adapters: int | None = Field(None, ge=1)  # per address; default from --max-cpu-loras / --max-loras

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("backend name must be 1-63 letters, digits, '_', '.' or '-' (it is a metric label)")
        return value

    @field_validator("url")
    @classmethod
    def _valid_url(cls, value: str | None) -> str | None:
        return None if value is None else _check_url(value)

    @field_validator("urls")
    @classmethod
    def _valid_urls(cls, value: list[str]) -> list[str]:
        return [_check_url(u) for u in value]

    @model_validator(mode="after")
    def _one_address(self) -> BackendConfig:
        if self.url and self.urls:
            raise ValueError("give either url or urls, not both")
        if not self.url and not self.urls:
            raise ValueError("url is required (the base URL of a vLLM OpenAI server, e.g. http://127.0.0.1:8000)")
        if self.launch and len(self.all_urls) != 1:
            raise ValueError("a launched backend has exactly one url (the address its vLLM process binds)")
        return self

    @model_validator(mode="after")
    def _one_keep_alive(self) -> BackendConfig:
        given = self.launch.env.get(KEEP_ALIVE_ENV) if self.launch else None
        if given is not None:
            if not given.isdigit() or int(given) < 2:
                raise ValueError(f"launch.env.{KEEP_ALIVE_ENV} must be a whole number of seconds, at least 2 "
                                 f"(got {given!r})")
            if self.keep_alive is not None and self.keep_alive != int(given):
                raise ValueError(f"keep_alive ({self.keep_alive}) and launch.env.{KEEP_ALIVE_ENV} ({given}) "
                                 f"disagree: set only keep_alive")
        return self

    @model_validator(mode="after")
    def _adapters_servable(self) -> BackendConfig:
        from .adapters.config import check_adapters

        check_adapters(self.adapters, self.max_loaded_adapters, self.launch.args if self.launch else None,
                       self.launch.env if self.launch else {})
        return self

    @property
    def adapter_limit(self) -> int:
        """Adapters the gateway keeps loaded per address (`max_loaded_adapters`, else vLLM's CPU cache size)."""
        from .adapters.config import default_limit, read_lora_flags

        if self.max_loaded_adapters is not None:
            return self.max_loaded_adapters
        return default_limit(read_lora_flags(self.launch.args if self.launch else []))

    @property
    def all_urls(self) -> list[str]:
        return [self.url] if self.url else list(self.urls)

    @property
    def served_model_name(self) -> str | None:
        """The name vLLM is told to serve under, when the gateway launches it."""
        if self.models:
            return self.models[0]
        return self.launch.model if self.launch else None

    @property
    def effective_keep_alive(self) -> int:
        """Seconds this backend keeps an idle connection open: `keep_alive`, else what its launch
        environment sets, else 60 for a process the gateway launches and vLLM's 5 for any other."""
        if self.keep_alive is not None:
            return self.keep_alive
        if self.launch is None:
            return VLLM_KEEP_ALIVE
        given = self.launch.env.get(KEEP_ALIVE_ENV)
        return int(given) if given is not None else LAUNCHED_KEEP_ALIVE

    def effective_timeouts(self, defaults: Timeouts) -> Timeouts:
        overrides = self.timeouts.model_dump(exclude_none=True)
        return defaults.model_copy(update=overrides) if overrides else defaults


def _check_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not an http(s) URL with a host, e.g. http://127.0.0.1:8000")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number in range
    except ValueError:
        raise ValueError(f"{value!r}: the port is not a number from 0 to 65535") from None
    if parts.query or parts.fragment:
        raise ValueError(f"{value!r}: a backend URL takes no query or fragment")
    if parts.path.rstrip("/").endswith("/v1"):
        # The gateway forwards /v1/chat/completions etc. to the same path: .../v1/v1/... would 404.
        raise ValueError(f"{value!r}: give the server's base URL without /v1, e.g. {value.rstrip('/')[:-3]!r}")
    return value.rstrip("/")


def _split_keys(value: Any) -> Any:
    """`GATEWAY_API_KEYS` may be a JSON list or a comma-separated string."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return yaml.safe_load(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="GATEWAY_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    host: str = "0.0.0.0"
    port: int = Field(8080, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=64)
    log_level: str = "info"
    access_log: bool = False
    # The gateway's own server protocol beneath uvicorn (`http.protocol`); false: stock uvicorn.
    fast_path: bool = True
    backends: list[BackendConfig] = []
    default_model: str | None = None
    model_refresh_interval: float = Field(30.0, gt=0)
    health_check_interval: float = Field(5.0, gt=0)
    timeouts: Timeouts = Timeouts()
    retries: Retries = Retries()
    circuit_breaker: CircuitBreaker = CircuitBreaker()
    gpu: GpuConfig = GpuConfig()
    api_keys: Annotated[list[SecretStr], NoDecode] = []
    metrics_api_key: SecretStr | None = None
    admin_api_key: SecretStr | None = None  # the admin routes and the operator page's actions (`api.operator`)
    ui: UiConfig = UiConfig()
    metrics_scrape_timeout: float = Field(2.0, gt=0)
    cors: Cors = Cors()
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    max_upload_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    shutdown_grace: float = Field(30.0, ge=0)

    _flags: ClassVar[dict[str, Any]] = {}

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML file arrives as init data; the environment overrides it; command-line flags
        # (a subclass's `_flags`, see `_with_overrides`) override both.
        if cls._flags:
            return (_Overrides(settings_cls, cls._flags), env_settings, init_settings)
        return (env_settings, init_settings)

    @field_validator("api_keys", mode="before")
    @classmethod
    def _keys_from_text(cls, value: Any) -> Any:
        return _split_keys(value)

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        seen_backends: set[str] = set()
        owner: dict[str, str] = {}
        for index, backend in enumerate(self.backends):
            if backend.name in seen_backends:
                raise ValueError(f"backends[{index}].name: duplicate backend name {backend.name!r}")
            seen_backends.add(backend.name)
            names = list(backend.models) + list(backend.aliases)
            if backend.launch and not backend.models:
                names.append(backend.launch.model)
            for name in dict.fromkeys(names):
                if name in owner and owner[name] != backend.name:
                    raise ValueError(
                        f"backends[{index}]: model or alias {name!r} is claimed by both "
                        f"{owner[name]!r} and {backend.name!r}"
                    )
                owner[name] = backend.name
            for name in backend.adapters:
                if name in owner or name in names:
                    raise ValueError(f"backends[{index}].adapters.{name}: the name is already a model or alias of "
                                     f"{owner.get(name, backend.name)!r}; give the adapter a name of its own")
                owner[name] = backend.name
        if self.default_model is not None and owner and self.default_model not in owner:
            raise ValueError(f"default_model: {self.default_model!r} is not a configured model or alias")
        launched = [b.name for b in self.backends if b.launch]
        if launched and self.workers > 1:
            raise ValueError(
                f"workers: {self.workers} gateway workers cannot launch backends (`launch:` in "
                f"{', '.join(launched)}): each worker would start its own copy of every vLLM process. Use workers: 1 "
                f"(one worker forwards thousands of requests per second), or start vLLM yourself and "
                f"drop `launch:`"
            )
        managed = [b.name for b in self.backends if b.adapters]
        if managed and self.workers > 1:
            raise ValueError(
                f"workers: {self.workers} gateway workers cannot manage adapters (`adapters:` in {', '.join(managed)}): "
                f"each worker would load and unload on its own, and unload what another one is using. Use workers: 1"
            )
        if any(b.launch and b.launch.on_demand for b in self.backends):
            from .residency.budget import problems

            on_demand = [b.name for b in self.backends if b.launch and b.launch.on_demand]
            found = problems(self.residency_budget(), on_demand)
            if found:
                raise ValueError("gpu.memory_budget: " + "\n  gpu.memory_budget: ".join(found))
            return self
        by_device = self.gpu_shares_by_device()
        for device, used in by_device.items():
            if sum(used.values()) > self.gpu.memory_budget + 1e-9:
                shares = ", ".join(f"{name}={share:g}" for name, share in used.items())
                where = f" on GPU {device}" if len(by_device) > 1 else ""
                raise ValueError(
                    f"gpu.memory_budget: the backends' gpu_memory_utilization add up to "
                    f"{sum(used.values()):.2f}{where} ({shares}), above the budget of {self.gpu.memory_budget:g}; "
                    f"lower a share or raise gpu.memory_budget"
                )
        return self

    def gpu_shares(self) -> dict[str, float]:
        """The fractions given in the configuration (`auto` shares come from the planner)."""
        return {
            b.name: b.launch.gpu_memory_utilization
            for b in self.backends
            if b.launch and isinstance(b.launch.gpu_memory_utilization, float)
        }

    def gpu_shares_by_device(self) -> dict[str, dict[str, float]]:
        """The given fractions summed where they are spent: per device a backend's vLLM uses (the first
        --tensor-parallel-size entries of its CUDA_VISIBLE_DEVICES; device 0.. when unset)."""
        out: dict[str, dict[str, float]] = {}
        for backend in self.backends:
            share = self.fixed_share(backend)
            if share is None:
                continue
            for device in self.gpu_devices(backend):
                out.setdefault(device, {})[backend.name] = share
        return out

    @staticmethod
    def fixed_share(backend: BackendConfig) -> float | None:
        """A launched backend's fraction as vLLM will get it (a --gpu-memory-utilization in args
        wins); None for `auto` (the planner's) and for no share at all."""
        from .vllm_args import BadLaunchArgs, read_flags

        launch = backend.launch
        if launch is None:
            return None
        try:
            flags = read_flags(launch.args)
        except BadLaunchArgs:
            flags = None
        share = flags.gpu_memory_utilization if flags and flags.gpu_memory_utilization is not None \
            else launch.gpu_memory_utilization
        return share if isinstance(share, float) else None

    @staticmethod
    def gpu_devices(backend: BackendConfig) -> list[str]:
        """The devices a launched backend's vLLM uses: the first --tensor-parallel-size entries of its
        CUDA_VISIBLE_DEVICES (device 0.. when unset)."""
        from .vllm_args import BadLaunchArgs, read_flags

        launch = backend.launch
        if launch is None:
            return []
        try:
            tp = read_flags(launch.args).tensor_parallel_size
        except BadLaunchArgs:
            tp = 1
        visible = launch.env.get("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES", ""))
        ids = [part.strip() for part in visible.split(",") if part.strip()] or [str(i) for i in range(tp)]
        return ids[:tp]

    def residency_budget(self, planned: Mapping[str, float] | None = None) -> Budget:
        """The launched backends' shares for the on-demand rules (`residency.budget`): fixed fractions
        from the configuration, `auto` ones from `planned` (the planner's figures) when given."""
        from .residency.budget import Budget

        launched = [b for b in self.backends if b.launch is not None]
        shares: dict[str, float | None] = {}
        for backend in launched:
            share = self.fixed_share(backend)
            shares[backend.name] = share if share is not None else (planned or {}).get(backend.name)
        resident = frozenset(b.name for b in launched if b.launch and not b.launch.on_demand
                             and shares[b.name] is not None)
        return Budget(self.gpu.memory_budget, {b.name: tuple(self.gpu_devices(b)) for b in launched}, shares, resident)

    def warnings(self) -> list[str]:
        """Valid but risky choices, printed by `check-config` and at start-up."""
        notes = []
        by_device = self.gpu_shares_by_device()
        on_demand = {b.name for b in self.backends if b.launch and b.launch.on_demand}
        for device, shares in list(by_device.items()):
            sleepers = {name: share for name, share in shares.items() if name in on_demand}
            if sleepers:  # residents plus the largest on-demand share: what is awake at worst, as instances go
                largest = max(sleepers, key=lambda name: sleepers[name])
                by_device[device] = {n: s for n, s in shares.items() if n not in on_demand or n == largest}
                asleep_alive = [b.name for b in self.backends if b.launch and b.name in sleepers and b.launch.swap == "sleep"]
                if asleep_alive:
                    notes.append(f"gpu: a sleeping vLLM still holds its CUDA context (a few hundred MB to a few GB) "
                                 f"outside the budget{f' on GPU {device}' if len(by_device) > 1 else ''}: leave room "
                                 f"for {len(asleep_alive)} of them ({', '.join(asleep_alive)}) below gpu.memory_budget")
        for device, shares in by_device.items():
            total = sum(shares.values())
            margin = 0.8 if len(shares) == 2 else 0.75
            if len(shares) >= 2 and total > margin:
                where = f" on GPU {device}" if len(by_device) > 1 else ""
                notes.append(
                    f"gpu: {len(shares)} co-located vLLM instances use {total:.2f} of GPU memory in sum{where}; "
                    f"above {margin} leaves little room for CUDA contexts and activations"
                )
        from .adapters.config import default_limit, read_lora_flags

        for index, backend in enumerate(self.backends):
            if backend.adapters and backend.launch and backend.max_loaded_adapters is not None:
                cached = default_limit(read_lora_flags(backend.launch.args))
                if backend.max_loaded_adapters > cached:
                    notes.append(f"backends[{index}].max_loaded_adapters: {backend.max_loaded_adapters} is above the "
                                 f"{cached} adapters vLLM keeps in memory (--max-cpu-loras, else --max-loras); the others "
                                 f"are read from disk again when asked for: raise --max-cpu-loras to match")
        if self.host not in ("127.0.0.1", "localhost", "::1") and not self.api_keys:
            notes.append("api_keys: none configured while listening beyond loopback; anyone who reaches the port can use it")
        if self.ui.enabled and self.api_keys and not (self.metrics_api_key or self.admin_api_key):
            notes.append("ui: the operator page (/ui) opens only with metrics_api_key or admin_api_key; neither is set")
        return notes


class ConfigError(Exception):
    """A configuration that cannot be used; the message names the offending key."""


def load_settings(path: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Read the YAML file (argument, else `GATEWAY_CONFIG`), apply the environment, then overrides."""
    from pydantic import ValidationError

    path = path or os.environ.get("GATEWAY_CONFIG") or None
    data: dict[str, Any] = {}
    if path:
        data = _read_yaml(Path(path))
    clean = {k: v for k, v in overrides.items() if v is not None}
    try:
        return _with_overrides(clean)(**data) if clean else Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path, clean)) from None
    except SettingsError as exc:  # an environment variable that should hold JSON does not
        field = re.search(r'field "([^"]+)"', str(exc))
        name = f"GATEWAY_{field.group(1).upper()}" if field else "a GATEWAY_* variable"
        cause = f" ({exc.__cause__})" if exc.__cause__ else ""
        raise ConfigError(f"invalid configuration: {name} is not valid JSON{cause}") from None


class _Overrides(PydanticBaseSettingsSource):
    """Command-line flags: above the environment, which is above the file."""

    def __init__(self, settings_cls: type[BaseSettings], values: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self.values = values

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self.values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self.values)


def _with_overrides(values: dict[str, Any]) -> type[Settings]:
    class FlaggedSettings(Settings):
        _flags: ClassVar[dict[str, Any]] = values

    return FlaggedSettings


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {str(path)!r}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of settings, got {type(data).__name__}")
    return data


def _describe(exc: Any, path: Any, flags: dict[str, Any] | None = None) -> str:
    lines = [f"invalid configuration{f' in {path}' if path else ''}:"]
    for err in exc.errors():
        key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
        message = err["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        if err["type"] == "extra_forbidden":
            message = "unknown key (check its spelling against the configuration reference)"
        lines.append(f"  {key}: {message}{_origin(err['loc'], flags or {})}" if key else f"  {message}")
    return "\n".join(lines)


def _origin(loc: tuple, flags: dict[str, Any]) -> str:
    """Where a top-level key came from when not from the file: a command-line flag or GATEWAY_*."""
    if not loc or not isinstance(loc[0], str):
        return ""
    if loc[0] in flags:
        return f" (from --{loc[0].replace('_', '-')})"
    name = f"GATEWAY_{loc[0]}".upper()
    found = sorted(k for k in os.environ if k.upper() == name or k.upper().startswith(name + "__"))
    return f" (from {', '.join(found)})" if found else ""
