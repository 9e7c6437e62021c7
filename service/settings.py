"""Service settings: environment variables ``ADAPOOL_*`` or the matching command-line flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Device = Literal["auto", "cpu", "cuda", "tensorrt"]


class Settings(BaseSettings):
    """Every knob of the service. Built once (``Settings()``) and passed to ``create_app``."""

    model_config = SettingsConfigDict(env_prefix="ADAPOOL_", frozen=True, extra="forbid")

    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on")
    grpc_port: int | None = Field(
        None, ge=0, le=65535, description="port of the KServe v2 gRPC service (none: off)"
    )
    model_repository: Path = Field(Path("model_repository"), description="Triton-style folder")
    models: list[str] = Field(
        default_factory=list, description="model names to serve (empty: every model found)"
    )
    default_model: str = Field("signature-adapool", description="the model behind POST /pool")
    device: Device = Field(
        "auto", description="auto tries CUDA then CPU; cuda and tensorrt are required"
    )
    model_instances: int = Field(
        2,
        ge=1,
        description="model runs of one version at once, each in a worker thread of its own "
        "(Triton's instance count); they share the version's session and the cores",
    )
    intra_op_threads: int = Field(
        0,
        ge=0,
        description="ONNX Runtime threads of a model version, divided among its "
        "model_instances, at least one per run (0: the cores the process may use)",
    )
    thread_spinning: bool = Field(
        False, description="let idle ONNX Runtime threads spin (only on cores of their own)"
    )

    max_body_bytes: int = Field(64 * 2**20, gt=0, description="largest request body accepted")
    max_items_per_request: int = Field(64, gt=0, description="items (token sets) per request")
    max_tokens_per_item: int = Field(2048, gt=0, description="tokens in one item")
    max_tokens_per_request: int = Field(32_768, gt=0, description="padded tokens per request")
    max_json_values: int = Field(
        1_048_576,
        gt=0,
        description="values (numbers, booleans) in one JSON body, counted before it is parsed: "
        "parsing costs about 60 bytes per value",
    )
    json_decode_processes: int = Field(
        1,
        ge=0,
        description="worker processes that parse large JSON-list bodies, so that parsing never "
        "holds the event loop (0: a thread of the server)",
    )

    max_batch_size: int = Field(64, gt=0, description="items merged into one model run")
    max_batch_tokens: int = Field(32_768, gt=0, description="padded tokens in one model run")
    batch_policy: Literal["measure", "off"] = Field(
        "measure",
        description="measure: time each model at start-up and close runs at the largest batch "
        "within 5% of its best items/s; off: batch up to the caps alone",
    )
    preferred_batch_tokens: int | None = Field(
        None, gt=0, description="pin every model's run size in padded tokens (none: per model)"
    )
    batch_probe_seconds: float = Field(
        0.25,
        gt=0,
        description="about this long per model for the start-up measurement (3 rounds at least)",
    )
    max_wait_ms: float = Field(
        0.0, ge=0, description="extra wait for a batch to fill (0: batch what queued meanwhile)"
    )
    max_queue_requests: int = Field(256, gt=0, description="queued requests per model before 429")
    retry_after_seconds: int = Field(1, ge=0, description="Retry-After sent with 429")
    head_admission: bool = Field(
        True,
        description="admit or refuse (429) a pool or infer request from its head, in the "
        "connection layer, before its body is read or the app sees it (false: the app does; "
        "the same answers, but a refusal costs several times more)",
    )
    shutdown_drain_seconds: float = Field(
        0.0,
        ge=0,
        description="after SIGTERM, keep serving with readiness 503 this long (the load "
        "balancer's readiness period) before closing the listener",
    )
    shutdown_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="then, time for in-flight requests to finish; requests still queued get 503",
    )

    max_header_bytes: int = Field(
        64 * 2**10,
        ge=1024,
        description="request line and headers of one request; over it: 431 and the connection "
        "closed (an endless header would hold memory and the event loop)",
    )
    max_query_parameters: int = Field(
        100, gt=0, description="query parameters of one request; over it: 400 naming the query"
    )
    header_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="time to send a complete request head, from connecting or from its first "
        "byte; else 408 and closed, or just closed if nothing came (silent connections, slowloris)",
    )
    body_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="time for a request body, plus its size at body_min_bytes_per_second; else "
        "408 and closed (slow bodies)",
    )
    body_min_bytes_per_second: int = Field(
        16 * 2**10, gt=0, description="the body rate a client must keep after body_timeout_seconds"
    )
    keep_alive_seconds: int = Field(
        5, gt=0, description="an idle keep-alive connection is closed after this (uvicorn's)"
    )
    max_connections: int = Field(
        4096,
        gt=0,
        description="open connections (the file-descriptor limit is raised to fit; where its "
        "hard limit is lower, as podman's 1,024, the cap and the listen backlog share it: 256 "
        "each); beyond it a new one replaces the oldest without a complete request head, or "
        "gets 503",
    )
    reserved_connections: int = Field(
        32,
        ge=0,
        description="of max_connections, kept for /health/* and /metrics: other routes get 503 "
        "on them, so probes and scrapes still get through near the cap",
    )
    max_requests_per_connection: int = Field(
        0,
        ge=0,
        description="answer Connection: close after this many requests on one connection, so "
        "keep-alive clients reach new replicas (0: no cap)",
    )
    max_connection_seconds: float = Field(
        0.0,
        ge=0,
        description="answer Connection: close on the first request after a connection is this "
        "old (0: no cap)",
    )

    top_k: int = Field(5, ge=0, description="default number of top tokens in diagnostics")
    api_key: SecretStr | None = Field(None, description="if set, require Authorization: Bearer")
    open_health_and_metrics: bool = Field(
        True, description="health and metrics stay open when api_key is set"
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log level")

    @field_validator("api_key", "grpc_port", "preferred_batch_tokens", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        # ADAPOOL_API_KEY= (set but empty, as compose files write it) means no key, not "".
        return None if value == "" else value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.max_tokens_per_item > self.max_tokens_per_request:
            raise ValueError("max_tokens_per_item must be <= max_tokens_per_request")
        # One request always fits one model run, so the batch limits bound memory per run.
        if self.max_items_per_request > self.max_batch_size:
            raise ValueError("max_items_per_request must be <= max_batch_size")
        if self.max_tokens_per_request > self.max_batch_tokens:
            raise ValueError("max_tokens_per_request must be <= max_batch_tokens")
        if self.reserved_connections >= self.max_connections:
            raise ValueError("reserved_connections must be < max_connections")
        return self


def settings_table() -> str:
    """The README's settings table, from the fields themselves (a test keeps the README equal)."""
    rows = ["| variable / flag | default | meaning |", "|---|---|---|"]
    for name, info in Settings.model_fields.items():
        default = info.get_default(call_default_factory=True)
        shown = "(none)" if default is None else str(default)
        if name == "max_body_bytes":
            shown += f" ({default // 2**20} MiB)"
        if name in ("max_header_bytes", "body_min_bytes_per_second"):
            shown += f" ({default // 2**10} KiB)"
        flag = "--" + name.replace("_", "-")
        rows.append(f"| `ADAPOOL_{name.upper()}` / `{flag}` | `{shown}` | {info.description} |")
    return "\n".join(rows) + "\n"
