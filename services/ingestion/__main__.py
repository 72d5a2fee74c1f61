import asyncio

from edge.common.runtime import serve
from edge.common.telemetry import configure_telemetry
from edge.ingestion.bootstrap import bootstrap
from edge.ingestion.settings import IngestionSettings


def main() -> None:
    settings = IngestionSettings()
    configure_telemetry("ingestion", settings.log_level)
    asyncio.run(serve(bootstrap(settings), settings.http_host, settings.http_port))


if __name__ == "__main__":
    main()
