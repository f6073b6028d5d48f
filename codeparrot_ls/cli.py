"""`codeparrot-ls`: start the language server."""

import sys


def main(argv=None) -> int:
    print("codeparrot-ls: the language server is not built yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
