"""`python -m robocache info|selftest|compile [--check]|bench|demo`; the commands live in cli.py
(worker processes of `compile --check` must import them from a real module, not __main__)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
