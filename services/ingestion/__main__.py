from edge.common.runtime import run_service
from edge.ingestion.bootstrap import bootstrap
from edge.ingestion.settings import IngestionSettings


def main() -> None:
    run_service("ingestion", IngestionSettings(), bootstrap)


if __name__ == "__main__":
    main()
