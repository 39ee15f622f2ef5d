"""The sections of config.toml as strict, frozen pydantic models (sinks validate themselves).

Each model applies its defaults and rejects unknown keys; validators say what is wrong in
words a config author understands. relay.config assembles them into a Config.
"""

from __future__ import annotations

import re
import zoneinfo
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from relay.config_types import Bool, Float, Int
from relay.crypto import DEFAULT_MAX_CLOCK_SKEW, fernet_key
from relay.guard import parse_networks
from relay.secret import Secret


class _Section(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, hide_input_in_errors=True, allow_inf_nan=False
    )


RESERVED_PATHS = ("/healthz", "/readyz", "/metrics")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


class AuthConfig(_Section):
    """Optional credentials the sender must present (for deployments behind a proxy)."""

    type: Literal["basic", "header"]
    username: str | None = None
    password: Secret | None = None
    header: str | None = None
    value: Secret | None = None

    @model_validator(mode="after")
    def _complete(self) -> AuthConfig:
        if self.type == "basic" and not (self.username and self.password):
            raise ValueError('type = "basic" needs username and password')
        if self.type == "header" and not (self.header and self.value):
            raise ValueError('type = "header" needs header (its name) and value')
        if self.username and ":" in self.username:
            raise ValueError('username cannot contain ":" (basic auth splits on it)')
        if self.header and not _HEADER_NAME.match(self.header):
            raise ValueError(f'"{self.header}" is not a valid header name')
        return self


def _listen_host(value: str) -> str:
    if not value.strip():
        # aiohttp would listen on every interface; that must be asked for, not fallen into.
        raise ValueError('is empty; give an address, e.g. "127.0.0.1", or "0.0.0.0" for every one')
    return value


class ServerConfig(_Section):
    host: Annotated[str, AfterValidator(_listen_host)] = "127.0.0.1"
    port: Int = Field(default=8080, ge=1, le=65535)
    path: str = "/webhooks/dataslayer"
    max_body_bytes: Int = Field(default=65536, ge=64, le=64 * 1024 * 1024)
    shutdown_timeout: Float = Field(default=10.0, ge=0, le=3600)
    body_timeout: Float = Field(default=10.0, gt=0, le=3600)  # seconds for a request's body
    allow_ips: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()
    max_failures_per_minute: Int = Field(default=30, ge=0)
    auth: AuthConfig | None = None

    @field_validator("allow_ips", "trusted_proxies")
    @classmethod
    def _networks(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        parse_networks(values)
        return values

    @field_validator("path")
    @classmethod
    def _path_is_absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError('must start with "/"')
        if value.rstrip("/") in RESERVED_PATHS:
            raise ValueError(f'"{value}" is the relay\'s own endpoint; choose another path')
        return value


def _usable_secret(value: Secret) -> Secret:
    fernet_key(value.reveal())  # ValueError says what is wrong, never the secret
    return value


# A Dataslayer secret (32 characters) or Fernet key (44) that can decrypt: checked per item, so
# an error names its place (`dataslayer.previous_secrets[1]`).
UsableSecret = Annotated[Secret, AfterValidator(_usable_secret)]


class DataslayerConfig(_Section):
    secret: UsableSecret
    previous_secrets: tuple[UsableSecret, ...] = ()
    max_token_age: Int = Field(default=86400, ge=0, le=366 * 86400)
    dedup_window: Int = Field(default=86400, ge=0, le=366 * 86400)
    max_clock_skew: Int = Field(default=DEFAULT_MAX_CLOCK_SKEW, ge=0, le=86400)

    @property
    def all_secrets(self) -> list[str]:
        return [self.secret.reveal(), *(s.reveal() for s in self.previous_secrets)]

    @property
    def remember_for(self) -> float:
        """Seconds an accepted event is remembered for dedup: ``dedup_window`` plus the clock
        skew, since a token stamped up to ``max_clock_skew`` ahead stays valid that much longer."""
        return remembered_for(self.dedup_window, self.max_clock_skew)


def remembered_for(dedup_window: float, max_clock_skew: float) -> float:
    """``dedup_window`` widened by the skew (0 stays 0: dedup turned off)."""
    return dedup_window + max_clock_skew if dedup_window else 0.0


class StorageConfig(_Section):
    path: Path = Path("relay.db")
    retention: Int = Field(
        default=7 * 86400, ge=0, le=10 * 366 * 86400
    )  # seconds; 0 = keep delivered events forever


class DeliveryConfig(_Section):
    max_attempts: Int = Field(default=10, ge=1, le=1_000_000)
    initial_backoff: Float = Field(default=5.0, gt=0, le=86400)
    max_backoff: Float = Field(default=3600.0, gt=0, le=7 * 86400)
    timeout: Float = Field(default=15.0, gt=0, le=3600)


class TemplatesConfig(_Section):
    dir: Path = Path("templates")
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f'unknown timezone "{value}" (use an IANA name like "Europe/Madrid")'
            ) from None
        return value


def _one_or_many(value: Any) -> Any:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise ValueError("must be a string or a list of strings")
    return value


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"
    show_personal_data: Bool = False

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


class MetricsConfig(_Section):
    enabled: Bool = True
    host: str = "127.0.0.1"  # only used with a port of its own
    port: Int | None = Field(default=None, ge=1, le=65535)  # None: on the main server


# A string or a list of them, as route keys take: `sinks = "ops"` as well as `sinks = ["ops"]`.
OneOrMany = Annotated[list[str], BeforeValidator(_one_or_many)]


class RouteConfig(_Section):
    datasource: OneOrMany = ["*"]
    type: OneOrMany = ["*"]
    sinks: OneOrMany

    @field_validator("sinks")
    @classmethod
    def _some(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("must name at least one sink")
        return value


class FallbackConfig(_Section):
    sinks: OneOrMany = []


class _RawConfig(_Section):
    server: ServerConfig = ServerConfig()
    dataslayer: DataslayerConfig
    storage: StorageConfig = StorageConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    templates: TemplatesConfig = TemplatesConfig()
    logging: LoggingConfig = LoggingConfig()
    metrics: MetricsConfig = MetricsConfig()
    sinks: dict[str, dict[str, Any]] = {}
    routes: list[RouteConfig] = []
    fallback: FallbackConfig = FallbackConfig()
