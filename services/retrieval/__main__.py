from edge.common.runtime import run_service
from edge.retrieval.bootstrap import bootstrap
from edge.retrieval.settings import RetrievalSettings


def main() -> None:
    run_service("retrieval", RetrievalSettings(), bootstrap)


if __name__ == "__main__":
    main()
