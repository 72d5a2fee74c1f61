from edge.auth.bootstrap import bootstrap
from edge.auth.settings import AuthSettings
from edge.common.runtime import run_service


def main() -> None:
    run_service("auth", AuthSettings(), bootstrap)


if __name__ == "__main__":
    main()
