from edge.common.runtime import run_service
from edge.listener.bootstrap import bootstrap
from edge.listener.settings import ListenerSettings


def main() -> None:
    run_service("listener", ListenerSettings(), bootstrap)


if __name__ == "__main__":
    main()
