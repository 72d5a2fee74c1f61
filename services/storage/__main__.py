from edge.common.runtime import run_service
from edge.storage.bootstrap import bootstrap
from edge.storage.settings import StorageSettings


def main() -> None:
    run_service("storage", StorageSettings(), bootstrap)


if __name__ == "__main__":
    main()
