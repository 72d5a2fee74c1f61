from edge.common.runtime import run_service
from edge.query.bootstrap import bootstrap
from edge.query.settings import QuerySettings


def main() -> None:
    run_service("query", QuerySettings(), bootstrap)


if __name__ == "__main__":
    main()
