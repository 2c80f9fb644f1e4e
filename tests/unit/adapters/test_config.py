"""`adapters:` and the launch's LoRA flags: load paths, flag reading, defaults, and the settings
errors that name the key."""

from __future__ import annotations

import os
from typing import Any

import pytest

from vllm_gateway.adapters.config import LoRAFlags, default_limit, lora_path, read_lora_flags
from vllm_gateway.settings import ConfigError, Settings, load_settings


def test_a_local_folder_is_sent_absolute_and_a_hub_id_bare() -> None:
    assert lora_path("/adapters/sql") == "/adapters/sql"
    assert lora_path("adapters/../sql", cwd="/srv") == "/srv/sql"  # never mistaken for a hub repo by vLLM
    assert lora_path("~/sql") == os.path.expanduser("~/sql")
    assert lora_path("hf:org/sql-lora") == "org/sql-lora"


@pytest.mark.parametrize("source", ["", "  ", "hf:", "hf:just-a-name", "hf:org/name@main", "hf:org/a/b"])
def test_bad_sources_are_refused(source: str) -> None:
    with pytest.raises(ValueError):
        lora_path(source)


def test_lora_flags_are_read_as_vllms_parser_reads_them() -> None:
    flags = read_lora_flags(["--dtype", "float32", "--enable-lora", "--max_loras=2", "--max-cpu-loras", "8",
                             "--lora-modules", "x=/a", '{"name": "y", "path": "/b", "base_model_name": "m"}',
                             "--max-lora-rank", "64"])
    assert flags == LoRAFlags(enable_lora=True, max_loras=2, max_cpu_loras=8, max_lora_rank=64,
                              lora_modules={"x": "/a", "y": "/b"})
    assert not read_lora_flags(["--enable-lora", "--no-enable-lora"]).enable_lora  # the last one wins
    assert read_lora_flags(["--lora-modules=z=/c"]).lora_modules == {"z": "/c"}


@pytest.mark.parametrize("args, message", [(["--max-loras"], "needs a value"), (["--max-loras", "two"], "whole number"),
                                           (["--lora-modules", "{oops"], "neither name=path nor JSON")])
def test_bad_lora_flags_name_the_flag(args: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        read_lora_flags(args)


@pytest.mark.parametrize("args, limit", [([], 1), (["--max-loras", "4"], 4), (["--max-loras", "4", "--max-cpu-loras", "16"], 16)])
def test_the_default_limit_is_what_vllm_keeps_in_cpu_memory(args: list[str], limit: int) -> None:
    assert default_limit(read_lora_flags(args)) == limit


def launched(args: list[str], **extra: Any) -> dict[str, Any]:
    return {"name": "chat", "url": "http://127.0.0.1:8001", "launch": {"model": "org/m", "args": args, **extra.pop("launch", {})},
            "adapters": {"sql": "/adapters/sql"}, **extra}


def error_of(*backends: dict[str, Any], **options: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, **{"backends": list(backends), **options})
    return str(caught.value)


def test_a_launched_backend_with_adapters_defaults_its_limit_from_its_flags() -> None:
    settings = Settings(backends=[launched(["--enable-lora", "--max-loras", "3"])])
    assert settings.backends[0].adapter_limit == 3
    assert Settings(backends=[launched(["--enable-lora"], max_loaded_adapters=9)]).backends[0].adapter_limit == 9


@pytest.mark.parametrize("backend, key, hint", [
    (launched([]), "backends[0]", "--enable-lora"),
    (launched(["--enable-lora", "--api-server-count", "2"]), "backends[0]", "--api-server-count 2"),
    (launched(["--enable-lora"], launch={"env": {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "0"}}), "backends[0]",
     "launch.env.VLLM_ALLOW_RUNTIME_LORA_UPDATING"),
    (launched(["--enable-lora", "--lora-modules", "sql=/x"]), "backends[0]", "adapters.sql: also loaded at start"),
    (launched(["--enable-lora", "--lora-modules", "x=/x"]), "backends[0]", "--max-cpu-loras: 1 leaves no room"),
    (launched(["--enable-lora"], adapters={"bad name": "/x"}), "backends[0]", "adapters.bad name"),
    (launched(["--enable-lora"], adapters={"sql": "hf:nope"}), "backends[0]", "adapters.sql: 'hf:nope'"),
    ({"name": "ext", "url": "http://127.0.0.1:8001", "adapters": {"sql": "/x"}}, "backends[0]",
     "max_loaded_adapters is required for an external backend"),
    ({"name": "ext", "url": "http://127.0.0.1:8001", "max_loaded_adapters": 2}, "backends[0]",
     "no adapters are configured"),
])
def test_adapter_mistakes_name_the_key(backend: dict[str, Any], key: str, hint: str) -> None:
    message = error_of(backend)
    assert f"{key}: " in message and hint in message


def test_an_adapter_name_may_not_be_a_model_or_alias() -> None:
    chat = launched(["--enable-lora"], models=["sql"])
    assert "backends[0].adapters.sql: the name is already a model or alias" in error_of(chat)
    other = {"name": "other", "url": "http://127.0.0.1:8002", "aliases": ["sql"]}
    assert "adapters.sql" in error_of(other, launched(["--enable-lora"]))


def test_several_workers_cannot_manage_adapters() -> None:
    external = {"name": "ext", "url": "http://127.0.0.1:8001", "adapters": {"sql": "/x"}, "max_loaded_adapters": 2}
    assert "workers: 2 gateway workers cannot manage adapters" in error_of(external, workers=2)


def test_a_limit_above_vllms_memory_is_a_warning() -> None:
    settings = Settings(backends=[launched(["--enable-lora", "--max-loras", "2"], max_loaded_adapters=8)])
    assert any("max_loaded_adapters: 8 is above the 2 adapters vLLM keeps" in note for note in settings.warnings())
    assert not any("max_loaded_adapters" in n for n in Settings(backends=[launched(["--enable-lora"])]).warnings())
