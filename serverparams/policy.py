"""What the console allows with each server parameter, declared as data.

One declaration feeds the catalog (parameter type, data type, allowed values), the validation
and the blade, so a policy change is a change here and nowhere else.
"""

from __future__ import annotations

# pg_settings.context -> the portal's "parameter type".
STATIC = "Static"
DYNAMIC = "Dynamic"
READ_ONLY = "Read-only"
CONTEXT_TYPES: dict[str, str] = {
    "postmaster": STATIC,
    "sighup": DYNAMIC,
    "superuser": DYNAMIC,
    "user": DYNAMIC,
    "backend": DYNAMIC,
    "superuser-backend": DYNAMIC,
    "internal": READ_ONLY,
}

# pg_settings.vartype -> the portal's "data type". List-valued parameters are "set" (below).
VARTYPE_TYPES: dict[str, str] = {
    "bool": "boolean",
    "enum": "enumeration",
    "integer": "integer",
    "real": "numeric",
    "string": "string",
}
SET = "set"

# Parameters the console manages itself (the module is preloaded, the server listens where
# the console expects it, the files stay where they are): shown, never edited here.
READ_ONLY_PARAMETERS: frozenset[str] = frozenset(
    {
        "shared_preload_libraries",
        "port",
        "listen_addresses",
        "unix_socket_directories",
        "unix_socket_group",
        "unix_socket_permissions",
        "data_directory",
        "config_file",
        "hba_file",
        "ident_file",
        "external_pid_file",
        "log_directory",
        "log_filename",
        "logging_collector",
        "ssl_cert_file",
        "ssl_key_file",
        "ssl_ca_file",
        "ssl_crl_file",
        "ssl_crl_dir",
        "dynamic_library_path",
        "archive_command",
        "archive_library",
        "restore_command",
        "local_preload_libraries",
        "session_preload_libraries",
        "azure_local_ai.service_url",
    }
)

# List-valued parameters edited as a checklist. The value names where the choices come from:
# "extensions" = the server's available extensions, or a fixed tuple of choices.
EXTENSIONS_SOURCE = "extensions"
SET_PARAMETERS: dict[str, str | tuple[str, ...]] = {
    "azure.extensions": EXTENSIONS_SOURCE,
    "log_destination": ("stderr", "csvlog", "jsonlog", "syslog"),
}

# Extensions whose use needs the machine to host a model: the extension name -> the catalog
# model whose memory and core needs apply (DEFAULT_MODEL: the one enabling it deploys, see
# inference.catalog.default_uri). The needs themselves live in the model catalog.
DEFAULT_MODEL = "default"
EXTENSION_MODEL_NEEDS: dict[str, str] = {
    "azure_local_ai": DEFAULT_MODEL,
}

# pg_settings.source values of settings nobody configured: the server computed them (the
# database's encoding, auto-tuned sizes) or the connecting client sent them. A parameter with
# such a source is not "modified", even if its value differs from the built-in boot value.
COMPUTED_SOURCES: frozenset[str] = frozenset({"default", "override", "client"})

# Rows per page of the blade.
PAGE_SIZE = 50
