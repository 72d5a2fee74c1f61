import asyncio

from edge.common.runtime import serve
from edge.common.telemetry import configure_telemetry
from edge.listener.bootstrap import bootstrap
from edge.listener.settings import ListenerSettings


def main() -> None:
    settings = ListenerSettings()
    configure_telemetry("listener", settings.log_level)
    asyncio.run(serve(bootstrap(settings), settings.http_host, settings.http_port))


if __name__ == "__main__":
    main()
