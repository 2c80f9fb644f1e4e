"""Configuration: YAML file + `GATEWAY_*` environment, and errors that name the bad key."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from vllm_gateway.settings import ConfigError, Settings, load_settings

BASE = """
port: 9000
timeouts: {response_head: 10}
backends:
  - name: embed
    url: http://127.0.0.1:8010/
    models: [Qwen/Qwen3-Embedding-0.6B]
    aliases: [embed, text-embedding-3-small]
    api_key: backend-secret
  - name: guard
    url: http://127.0.0.1:8000
"""


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees only the GATEWAY_* variables it sets itself."""
    for name in list(os.environ):
        if name.upper().startswith("GATEWAY_"):
            monkeypatch.delenv(name)


@pytest.fixture
def write(tmp_path: Path):
    def write(text: str, name: str = "gateway.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return write


def error_of(path: Path | None = None, **overrides) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(path, **overrides)
    return str(caught.value)


# -- reading ------------------------------------------------------------------------------------------

def test_yaml_file_is_read_with_defaults_for_the_rest(write) -> None:
    settings = load_settings(write(BASE))
    assert settings.port == 9000 and settings.host == "0.0.0.0"
    assert settings.timeouts.response_head == 10 and settings.timeouts.connect == 5.0
    embed, guard = settings.backends
    assert embed.url == "http://127.0.0.1:8010"  # trailing slash dropped
    assert embed.models == ["Qwen/Qwen3-Embedding-0.6B"] and embed.aliases == ["embed", "text-embedding-3-small"]
    assert embed.api_key.get_secret_value() == "backend-secret"
    assert "backend-secret" not in repr(settings) and "backend-secret" not in str(settings.model_dump())
    assert guard.models == [] and guard.api_key is None


def test_defaults_without_any_file() -> None:
    settings = load_settings()
    assert (settings.host, settings.port, settings.workers, settings.backends) == ("0.0.0.0", 8080, 1, [])
    assert settings.default_model is None and settings.api_keys == []


def test_environment_overrides_the_file(write, monkeypatch) -> None:
    monkeypatch.setenv("GATEWAY_PORT", "9100")
    monkeypatch.setenv("GATEWAY_LOG_LEVEL", "debug")
    settings = load_settings(write(BASE))
    assert settings.port == 9100 and settings.log_level == "debug"
    assert len(settings.backends) == 2  # the rest still comes from the file


def test_nested_environment_key_merges_with_the_file(write, monkeypatch) -> None:
    monkeypatch.setenv("GATEWAY_TIMEOUTS__CONNECT", "3")
    settings = load_settings(write(BASE))
    assert settings.timeouts.connect == 3.0
    assert settings.timeouts.response_head == 10.0  # from the file, not reset to the default


def test_backends_as_json_in_the_environment_replace_the_file_list(write, monkeypatch) -> None:
    monkeypatch.setenv("GATEWAY_BACKENDS", '[{"name": "chat", "url": "http://127.0.0.1:8001", "aliases": ["gpt-4o-mini"]}]')
    settings = load_settings(write(BASE))
    assert [b.name for b in settings.backends] == ["chat"]
    assert settings.backends[0].aliases == ["gpt-4o-mini"]


def test_environment_alone_configures_everything(monkeypatch) -> None:
    monkeypatch.setenv("GATEWAY_BACKENDS", '[{"name": "chat", "url": "http://127.0.0.1:8001"}]')
    monkeypatch.setenv("GATEWAY_HOST", "127.0.0.1")
    settings = load_settings()
    assert settings.host == "127.0.0.1" and settings.backends[0].url == "http://127.0.0.1:8001"


def test_gateway_config_names_the_file(write, monkeypatch) -> None:
    monkeypatch.setenv("GATEWAY_CONFIG", str(write(BASE)))
    assert load_settings().port == 9000


def test_an_explicit_path_wins_over_gateway_config(write, monkeypatch) -> None:
    monkeypatch.setenv("GATEWAY_CONFIG", str(write(BASE)))
    other = write("port: 9300\n", "other.yaml")
    assert load_settings(other).port == 9300


@pytest.mark.parametrize("value", ["key-one,key-two", " key-one , key-two ,", '["key-one", "key-two"]'])
def test_api_keys_from_the_environment_comma_or_json(monkeypatch, value: str) -> None:
    monkeypatch.setenv("GATEWAY_API_KEYS", value)
    keys = load_settings().api_keys
    assert [k.get_secret_value() for k in keys] == ["key-one", "key-two"]


def test_api_keys_as_a_yaml_list(write) -> None:
    keys = load_settings(write("api_keys: [a, b]\n")).api_keys
    assert [k.get_secret_value() for k in keys] == ["a", "b"]


def test_command_line_flags_win_over_environment_and_file(write, monkeypatch) -> None:
    monkeypatch.setenv("GATEWAY_PORT", "9100")
    settings = load_settings(write(BASE), port=9200, host=None)
    assert isinstance(settings, Settings)
    assert settings.port == 9200 and settings.host == "0.0.0.0"  # None means "flag not given"
    assert [b.name for b in settings.backends] == ["embed", "guard"]


def test_empty_file_is_all_defaults(write) -> None:
    assert load_settings(write("")).port == 8080


def test_per_backend_timeouts_override_the_defaults() -> None:
    settings = Settings(timeouts={"connect": 2, "response_head": 30},
                        backends=[{"name": "a", "url": "http://h:1", "timeouts": {"response_head": 5}}])
    effective = settings.backends[0].effective_timeouts(settings.timeouts)
    assert (effective.connect, effective.response_head) == (2, 5)


def test_keep_alive_is_vllms_5_s_for_a_server_and_60_s_for_a_launched_process() -> None:
    settings = Settings(backends=[
        {"name": "server", "url": "http://h:1"},
        {"name": "tuned", "url": "http://h:2", "keep_alive": 30},
        {"name": "launched", "url": "http://h:3", "launch": {"model": "m3"}},
        {"name": "by-env", "url": "http://h:4", "launch": {"model": "m4", "env": {"VLLM_HTTP_TIMEOUT_KEEP_ALIVE": 20}}},
        {"name": "both", "url": "http://h:5", "keep_alive": 9, "launch": {"model": "m5",
                                                                            "env": {"VLLM_HTTP_TIMEOUT_KEEP_ALIVE": "9"}}},
    ])
    assert [b.effective_keep_alive for b in settings.backends] == [5, 30, 60, 20, 9]


def test_several_urls_are_replicas() -> None:
    backend = Settings(backends=[{"name": "a", "urls": ["http://h:1/", "http://h:2"]}]).backends[0]
    assert backend.all_urls == ["http://h:1", "http://h:2"]


# -- mistakes: a ConfigError naming the key -------------------------------------------------------------

def test_unknown_top_level_key(write) -> None:
    message = error_of(write("prot: 8080\n"))
    assert "prot: unknown key" in message and "gateway.yaml" in message


def test_unknown_backend_key_is_named_with_its_position(write) -> None:
    message = error_of(write("""
        backends:
          - {name: a, url: "http://h:1"}
          - {name: b, url: "http://h:2", modles: [x]}
    """))
    assert "backends[1].modles: unknown key" in message


def test_unknown_nested_key(write) -> None:
    assert "timeouts.conect: unknown key" in error_of(write("timeouts: {conect: 1}\n"))


def test_duplicate_backend_name(write) -> None:
    message = error_of(write("""
        backends:
          - {name: chat, url: "http://h:1"}
          - {name: chat, url: "http://h:2"}
    """))
    assert "backends[1].name" in message and "duplicate backend name 'chat'" in message
    assert "(top level)" not in message


@pytest.mark.parametrize(("first", "second"), [
    ("models: [m]", "models: [m]"),
    ("models: [m]", "aliases: [m]"),
    ("aliases: [m]", "aliases: [m]"),
    ("aliases: [m]", "models: [m]"),
])
def test_model_or_alias_claimed_by_two_backends(write, first: str, second: str) -> None:
    message = error_of(write(f"""
        backends:
          - {{name: one, url: "http://h:1", {first}}}
          - {{name: two, url: "http://h:2", {second}}}
    """))
    assert "backends[1]" in message and "'m'" in message and "'one'" in message and "'two'" in message


def test_an_alias_equal_to_the_backends_own_model_is_harmless() -> None:
    backend = Settings(backends=[{"name": "a", "url": "http://h:1", "models": ["m"], "aliases": ["m"]}]).backends[0]
    assert backend.served_model_name == "m"


def test_default_model_must_be_configured() -> None:
    with pytest.raises(Exception, match="default_model"):
        Settings(default_model="zz", backends=[{"name": "a", "url": "http://h:1", "models": ["m"]}])
    assert Settings(default_model="m", backends=[{"name": "a", "url": "http://h:1", "models": ["m"]}]).default_model == "m"


@pytest.mark.parametrize(("url", "why"), [
    ("ftp://h:1", "not an http(s) URL"),
    ("127.0.0.1:8000", "not an http(s) URL"),
    ("http://", "not an http(s) URL"),
    ("http://h:1/?x=1", "no query or fragment"),
    ("http://h:1#top", "no query or fragment"),
    ("http://h:99999", "port"),
    ("http://h:8000/v1", "without /v1"),
    ("http://h:8000/v1/", "without /v1"),
])
def test_bad_urls(write, url: str, why: str) -> None:
    message = error_of(write(f"backends: [{{name: a, url: '{url}'}}]\n"))
    assert "backends[0].url" in message and why in message


def test_url_is_required_and_exclusive_with_urls(write) -> None:
    assert "backends[0]: url is required" in error_of(write("backends: [{name: a}]\n"))
    assert "either url or urls" in error_of(write("backends: [{name: a, url: 'http://h:1', urls: ['http://h:2']}]\n"))


def test_backend_name_must_fit_a_metric_label(write) -> None:
    assert "backends[0].name" in error_of(write("backends: [{name: 'a b', url: 'http://h:1'}]\n"))


def test_out_of_range_values(write) -> None:
    assert "port:" in error_of(write("port: 70000\n"))
    assert "timeouts.connect" in error_of(write("timeouts: {connect: 0}\n"))


def test_keep_alive_mistakes_name_the_key(write) -> None:
    assert "backends[0].keep_alive: Input should be greater than or equal to 2" in error_of(write("""
        backends:
          - {name: a, url: 'http://h:1', keep_alive: 1}
    """))
    message = error_of(write("""
        backends:
          - {name: a, url: 'http://h:1', keep_alive: 30, launch: {model: m, env: {VLLM_HTTP_TIMEOUT_KEEP_ALIVE: '20'}}}
    """))
    assert "keep_alive (30) and launch.env.VLLM_HTTP_TIMEOUT_KEEP_ALIVE (20) disagree: set only keep_alive" in message
    message = error_of(write("""
        backends:
          - {name: a, url: 'http://h:1', launch: {model: m, env: {VLLM_HTTP_TIMEOUT_KEEP_ALIVE: '1.5'}}}
    """))
    assert "launch.env.VLLM_HTTP_TIMEOUT_KEEP_ALIVE must be a whole number of seconds, at least 2 (got '1.5')" in message


def test_file_problems(write, tmp_path: Path) -> None:
    assert "cannot read configuration file" in error_of(tmp_path / "missing.yaml")
    assert "not valid YAML" in error_of(write("backends: [\n"))
    assert "top level must be a mapping" in error_of(write("- a\n- b\n"))


def test_errors_from_the_environment_name_the_variable(write, monkeypatch) -> None:
    monkeypatch.setenv("GATEWAY_PORT", "many")
    message = error_of(write(BASE))
    assert "port:" in message and "GATEWAY_PORT" in message


def test_errors_from_a_flag_name_the_flag(write) -> None:
    assert "(from --port)" in error_of(write(BASE), port=-1)


def test_invalid_json_in_the_environment_is_a_config_error(monkeypatch) -> None:
    monkeypatch.setenv("GATEWAY_BACKENDS", '[{"name":')
    assert "GATEWAY_BACKENDS is not valid JSON" in error_of()


def test_unknown_key_inside_environment_json(monkeypatch) -> None:
    monkeypatch.setenv("GATEWAY_BACKENDS", '[{"name": "a", "url": "http://h:1", "api_kye": "x"}]')
    message = error_of()
    assert "backends[0].api_kye: unknown key" in message and "GATEWAY_BACKENDS" in message


def test_secrets_never_appear_in_error_messages(write) -> None:
    message = error_of(write("backends: [{name: a, url: 'ftp://h:1', api_key: very-secret-key}]\n"))
    assert "very-secret-key" not in message


# -- the memory planner's keys (gpu.memory, gpu_memory_utilization: auto and its targets) ------------------

def launched(launch: str, extra: str = "") -> str:
    return f"{extra}backends:\n  - {{name: guard, url: 'http://127.0.0.1:8000', launch: {{model: m, {launch}}}}}\n"


def test_gpu_memory_takes_sizes_as_people_write_them(write) -> None:
    assert load_settings(write("gpu: {memory: 48GB}\n")).gpu.memory == 48 * 10**9
    assert load_settings(write("gpu: {memory: 45.5G}\n")).gpu.memory == int(45.5 * 2**30)
    assert load_settings(write("gpu: {memory: 48000000000}\n")).gpu.memory == 48 * 10**9
    message = error_of(write("gpu: {memory: lots}\n"))
    assert "gpu.memory:" in message and "48GB (decimal)" in message


def test_auto_with_a_target(write) -> None:
    launch = load_settings(write(launched("gpu_memory_utilization: auto, max_model_len: 32768, "
                                          "concurrent_sequences: 4"))).backends[0].launch
    assert launch is not None and (launch.gpu_memory_utilization, launch.concurrent_sequences) == ("auto", 4)


@pytest.mark.parametrize(("launch", "message"), [
    ("gpu_memory_utilization: auto, concurrent_sequences: 2", "auto needs max_model_len"),
    ("gpu_memory_utilization: auto, max_model_len: 8192", "exactly one target: concurrent_sequences"),
    ("gpu_memory_utilization: auto, max_model_len: 8192, concurrent_sequences: 2, kv_cache_tokens: 9",
     "exactly one target"),
    ("gpu_memory_utilization: 0.5, concurrent_sequences: 2", "concurrent_sequences is a target for "
                                                            "gpu_memory_utilization: auto"),
    ("gpu_memory_utilization: auto, max_model_len: 8192, kv_cache_tokens: 9, args: [--kv-cache-memory-bytes, 8G]",
     "auto computes --kv-cache-memory-bytes itself; remove it from launch.args"),
    ("gpu_memory_utilization: 1.5", "a fraction of the GPU's total above 0 and at most 1, or auto"),
    ("gpu_memory_utilization: automatic", "or auto (got 'automatic')"),
    ("gpu_memory_utilization: auto, max_model_len: 8192, concurrent_sequences: 0", "concurrent_sequences"),
])
def test_planner_key_mistakes_name_the_key(write, launch: str, message: str) -> None:
    text = error_of(write(launched(launch)))
    assert "backends[0].launch" in text and message in text


def test_the_share_sum_is_per_gpu(write) -> None:
    two = ("backends:\n"
           "  - {name: a, url: 'http://127.0.0.1:8000', launch: {model: m, gpu_memory_utilization: 0.8, "
           "env: {CUDA_VISIBLE_DEVICES: '0'}}}\n"
           "  - {name: b, url: 'http://127.0.0.1:8001', launch: {model: n, gpu_memory_utilization: 0.8, "
           "env: {CUDA_VISIBLE_DEVICES: '1'}}}\n")
    assert load_settings(write(two)).gpu_shares_by_device() == {"0": {"a": 0.8}, "1": {"b": 0.8}}
    same = two.replace("CUDA_VISIBLE_DEVICES: '1'", "CUDA_VISIBLE_DEVICES: '0'")
    assert "add up to 1.60 (a=0.8, b=0.8), above the budget of 0.9" in error_of(write(same))
    tp = two.replace("gpu_memory_utilization: 0.8, env: {CUDA_VISIBLE_DEVICES: '1'}",
                     "gpu_memory_utilization: 0.2, args: [-tp, '2'], env: {CUDA_VISIBLE_DEVICES: '1,0'}")
    assert "add up to 1.00 on GPU 0 (a=0.8, b=0.2)" in error_of(write(tp))


# -- on-demand residency ---------------------------------------------------------------------------

THREE = ("gpu: {memory_budget: 0.9}\n"
         "backends:\n"
         "  - {name: embed, url: 'http://127.0.0.1:8000', launch: {model: e, gpu_memory_utilization: EMBED}}\n"
         "  - {name: a, url: 'http://127.0.0.1:8001', launch: {model: a, gpu_memory_utilization: 0.75, residency: on_demand}}\n"
         "  - {name: b, url: 'http://127.0.0.1:8002', launch: {model: b, gpu_memory_utilization: 0.75, residency: on_demand,"
         " swap: restart}}\n")


def test_on_demand_backends_may_add_up_past_the_budget_when_each_fits_beside_the_residents(write) -> None:
    settings = load_settings(write(THREE.replace("EMBED", "0.1")))
    a = settings.backends[1].launch
    assert a.on_demand and a.swap == "sleep" and a.sleep_level == 1 and a.max_wait == 120 and a.min_awake == 10
    assert a.effective_wake_timeout == 120 and settings.backends[2].launch.effective_wake_timeout == 1800  # ready_timeout
    budget = settings.residency_budget()
    assert budget.resident == {"embed"} and budget.shares == {"embed": 0.1, "a": 0.75, "b": 0.75}
    assert settings.gpu.max_swap_delay == 10 and settings.admin_api_key is None


def test_an_on_demand_backend_that_could_never_wake_is_refused_naming_why(write) -> None:
    text = error_of(write(THREE.replace("EMBED", "0.2")))
    assert "gpu.memory_budget: backend a (residency: on_demand, gpu_memory_utilization 0.75) could never be woken" in text
    assert "beside the always-resident backends (embed=0.2) it needs 0.95" in text


def test_residents_that_cannot_fit_are_refused_even_with_on_demand_backends(write) -> None:
    text = error_of(write(THREE.replace("EMBED", "0.95").replace("memory_budget: 0.9", "memory_budget: 0.9")))
    assert "the always-resident backends' gpu_memory_utilization add up to 0.95 (embed=0.95)" in text


@pytest.mark.parametrize("launch, message", [
    ("gpu_memory_utilization: 0.5, swap: restart", "launch.swap applies only to `residency: on_demand`"),
    ("gpu_memory_utilization: 0.5, max_wait: 5", "launch.max_wait applies only to `residency: on_demand`"),
    ("residency: on_demand", "residency: on_demand needs gpu_memory_utilization"),
    ("gpu_memory_utilization: 0.5, residency: on_demand, swap: restart, sleep_level: 2", "launch.sleep_level is for `swap: sleep`"),
    ("gpu_memory_utilization: 0.5, residency: sometimes", "'always' or 'on_demand'"),
    ("gpu_memory_utilization: 0.5, residency: on_demand, sleep_level: 3", "1 or 2"),
    ("gpu_memory_utilization: 0.5, residency: on_demand, swap: pause", "'sleep' or 'restart'"),
])
def test_residency_key_mistakes_name_the_key(write, launch: str, message: str) -> None:
    text = error_of(write(launched(launch)))
    assert "backends[0].launch" in text and message in text, text
