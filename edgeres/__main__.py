"""``python -m edgeres`` and the ``edgeres`` console script.

Ctrl-C and SIGTERM are handled from the first line (:mod:`edgeres.core.stop`), so a signal that comes while
the command line's modules are still loading exits 130 or 143 with one line too, never with a traceback.
"""

import signal

from edgeres.core.stop import stops_cleanly


def main() -> None:
    with stops_cleanly((signal.SIGINT, signal.SIGTERM)):
        from edgeres.cli import main as cli_main

        cli_main()


if __name__ == "__main__":  # pragma: no cover - thin entry point
    main()
