"""The README's configuration table names every setting the services read, with its default."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from emr_audit.settings import AuditSettings
from emr_devstack.settings import DevstackSettings
from emr_gateway.settings import GatewaySettings
from emr_identity.settings import IdentitySettings
from emr_national_emulator.settings import EmulatorSettings
from emr_records.settings import RecordsSettings
from emr_runtime.auth import AuthSettings
from emr_runtime.tls import TlsSettings
from emr_sync.settings import SyncSettings

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.parametrize(
    "settings",
    [
        IdentitySettings,
        RecordsSettings,
        AuditSettings,
        SyncSettings,
        GatewaySettings,
        EmulatorSettings,
        TlsSettings,
        AuthSettings,
        DevstackSettings,
    ],
)
def test_every_setting_is_documented_with_its_default(settings: type[BaseSettings]) -> None:
    table = README.read_text()
    prefix = settings.model_config.get("env_prefix", "")
    defaults = settings.model_construct()
    for name, field in settings.model_fields.items():
        choices = getattr(field.validation_alias, "choices", None)
        variable = str(choices[0]) if choices else f"{prefix}{name}".upper()
        value = getattr(defaults, name)
        shown = f"{value:g}" if isinstance(value, float) else str(value)
        assert f"| `{variable}` | `{shown}` |" in table, (
            f"{variable} with default {shown} is not in the README"
        )
