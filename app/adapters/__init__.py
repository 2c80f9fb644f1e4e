"""LoRA adapters the gateway loads into its backends on first use (`adapters:` in a backend's
configuration): `config` what the keys mean, `state` the records per address, `client` vLLM's load
and unload routes, `manager` the one writer of which adapter is loaded where."""
