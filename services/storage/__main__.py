import asyncio

from edge.common.runtime import serve
from edge.common.telemetry import configure_telemetry
from edge.storage.bootstrap import bootstrap
from edge.storage.settings import StorageSettings


def main() -> None:
    settings = StorageSettings()
    configure_telemetry("storage", settings.log_level)
    asyncio.run(serve(bootstrap(settings), settings.http_host, settings.http_port))


if __name__ == "__main__":
    main()
