import asyncio

from edge.auth.bootstrap import bootstrap
from edge.auth.settings import AuthSettings
from edge.common.runtime import serve
from edge.common.telemetry import configure_telemetry


def main() -> None:
    settings = AuthSettings()
    configure_telemetry("auth", settings.log_level)
    asyncio.run(serve(bootstrap(settings), settings.http_host, settings.http_port))


if __name__ == "__main__":
    main()
